//! `hubel scan` and `hubel top`: arguments in, the index out / a feature's examples printed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::{Corpus, ScanIndex, ScanOptions};
use crate::assets;
use crate::features::FeatureId;
use crate::model::Model;

pub const USAGE: &str = "\
  hubel scan [--model PATH] [--corpus wordnet|FILE|DIR] [--limit N|all] [--out FILE] [--k K]
             [--dict D.safetensors]
             scan a corpus: every neuron's and head's top/lowest examples, histogram, density,
             quantile examples, firing tokens (default --limit: the first 8000 stimuli, as the
             app's default scan; default --out: the data dir's scans/ folder, the file the app
             uses; scanning into the same file again resumes or extends it); --dict scans that
             dictionary's features too (their codes), into a file of their own by default
  hubel top FEATURE [--index FILE] [--k K] [--lowest] [--json]
             a feature's (L8N1000, L5H3, L6D42) top or lowest examples from a scan index
  hubel label FEATURE [--index FILE] [--model PATH] [--recompute] [--json]
             a feature's offline label: firing tokens and their context, WordNet categories
             over-represented in its top examples, promoted tokens; every feature's label is
             computed once and kept beside the index (FILE.labels.json)
  hubel search QUERY [--index FILE] [--n 20] [--basis neurons|heads] [--json]
             features that fire on a token (`left` also matches ` left`), then features whose
             labels mention the query's words";

use crate::cli::{flag, number, value};

fn finish(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        bail!("unexpected argument `{a}`\n\nUSAGE:\n{USAGE}");
    }
    Ok(())
}

fn scans_dir() -> PathBuf {
    assets::assets_dir().join("scans")
}

/// `hubel scan …` or `hubel top …` (`command` is the word, `args` what follows).
pub fn command(command: &str, mut args: Vec<String>) -> anyhow::Result<()> {
    if command == "top" {
        return top(args);
    }
    if command == "label" || command == "search" {
        return labels_command(command, args);
    }
    let model_path = match value(&mut args, "--model")? {
        Some(p) => PathBuf::from(p),
        None => assets::default_model_path(&assets::assets_dir()),
    };
    let corpus_arg = value(&mut args, "--corpus")?.unwrap_or_else(|| "wordnet".into());
    let limit =
        match value(&mut args, "--limit")?.as_deref() {
            None => Some(super::index::DEFAULT_STIMULI),
            Some("all") => None,
            Some(v) => Some(v.parse().with_context(|| {
                format!("--limit expects a number of stimuli or `all`, got `{v}`")
            })?),
        };
    let out = value(&mut args, "--out")?.map(PathBuf::from);
    let mut opts = ScanOptions {
        limit,
        ..ScanOptions::default()
    };
    if let Some(k) = number(&mut args, "--k")? {
        opts.config.k = k.max(1);
    }
    if let Some(path) = value(&mut args, "--dict")? {
        let dict = crate::features::dictionary::io::load(Path::new(&path))
            .with_context(|| format!("opening the dictionary {path}"))?;
        if dict.resid_layers().is_empty() {
            bail!(
                "{path} reads {}: a scan reads dictionaries of a block's hook_resid_post",
                dict.hooks_text()
            );
        }
        opts.dictionary = Some(std::sync::Arc::new(dict));
    }
    finish(&args)?;
    if !model_path.exists() {
        bail!(
            "the model {} is not there: run `hubel fetch --model`, or pass --model PATH",
            model_path.display()
        );
    }
    let model = Model::open(&model_path)
        .with_context(|| format!("opening the model {}", model_path.display()))?;
    let corpus = if corpus_arg == "wordnet" {
        let dir = assets::corpus_dir(&assets::assets_dir());
        Corpus::wordnet(&dir)?
    } else {
        Corpus::text(Path::new(&corpus_arg))?
    };
    let out = out.unwrap_or_else(|| {
        let path = super::index::default_index_path(
            &scans_dir(),
            &model.info().sha256,
            &corpus.name,
            &corpus.sha256(),
        );
        match &opts.dictionary {
            Some(d) => super::index::with_dictionary(&path, &d.sha256()),
            None => path,
        }
    });
    if let Some(d) = &opts.dictionary {
        if d.d() != model.config().d_model {
            bail!(
                "the dictionary reads {} dimensions; this model's residual stream has {}",
                d.d(),
                model.config().d_model
            );
        }
    }
    opts.out = Some(out.clone());
    let bytes = opts.config.state_bytes(model.info());
    eprintln!(
        "scan: {} stimuli of {} ({}), statistics in memory: {:.1} MB ({} features × {} B)",
        limit
            .unwrap_or(corpus.stimuli.len())
            .min(corpus.stimuli.len()),
        corpus.stimuli.len(),
        corpus.name,
        bytes as f64 / 1e6,
        model.info().layers * (model.info().d_mlp + model.info().heads),
        opts.config.sizes().bytes_per_unit()
    );
    let model = std::sync::Arc::new(model);
    let (m, c, o) = (model.clone(), corpus, opts);
    let index =
        crate::jobs::progress::run_reporting("Scan", move |ctx| super::job(ctx, &m, &c, &o))
            .map_err(|e| anyhow::Error::msg(e.to_string()))
            .context("scanning")?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let meta = &index.meta;
    println!(
        "index  {} ({:.1} MB)\nscanned {} stimuli, {} windows, {} tokens in {:.1} s ({:.0} tokens/s; forward {:.1} s, statistics {:.1} s){}",
        out.display(),
        size as f64 / 1e6,
        meta.stimuli_done,
        meta.windows_done,
        meta.tokens_done,
        meta.seconds,
        meta.tokens_done as f64 / meta.seconds.max(1e-9),
        meta.forward_seconds,
        meta.stats_seconds,
        if meta.complete { ", the whole corpus" } else { "" }
    );
    Ok(())
}

fn newest_index() -> anyhow::Result<PathBuf> {
    let dir = scans_dir();
    // The default model's index first (the app's), else the newest of any model.
    let model = assets::default_model_path(&assets::assets_dir());
    if let Ok(sha) = assets::sha256_file(&model) {
        if let Some((p, _)) = super::index::find_index(&dir, &sha) {
            return Ok(p);
        }
    }
    let newest = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    match newest {
        Some((_, p)) => Ok(p),
        None => bail!(
            "no scan index in {}: run `hubel scan` first, or pass --index FILE",
            dir.display()
        ),
    }
}

fn top(mut args: Vec<String>) -> anyhow::Result<()> {
    let index = value(&mut args, "--index")?.map(PathBuf::from);
    let k = number(&mut args, "--k")?.unwrap_or(10);
    let lowest = flag(&mut args, "--lowest");
    let json = flag(&mut args, "--json");
    if args.is_empty() {
        bail!("top needs a feature, e.g. `hubel top L8N1000`\n\nUSAGE:\n{USAGE}");
    }
    let feature = FeatureId::parse(&args.remove(0)).map_err(anyhow::Error::msg)?;
    finish(&args)?;
    let path = match index {
        Some(p) => p,
        None => newest_index()?,
    };
    let index = ScanIndex::load(&path)?;
    let examples = index
        .examples(&feature, lowest, k)
        .map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&examples)?);
        return Ok(());
    }
    let s = index.summary(&feature, 0).map_err(anyhow::Error::msg)?;
    println!(
        "{feature}: {} examples of {} ({} stimuli, {}); {}",
        if lowest { "lowest" } else { "top" },
        index.meta.model_name,
        index.meta.stimuli_done,
        index.meta.corpus,
        index.meta.position0
    );
    println!(
        "density {:.3} (> {}), mean {:.3}, range {:.3} … {:.3}",
        s.density, s.threshold, s.mean, s.min, s.max
    );
    for e in &examples {
        let lo = e.pos.saturating_sub(8);
        let hi = (e.pos + 9).min(e.tokens.len());
        let ctx: String = (lo..hi)
            .map(|i| {
                let t = e.tokens[i].replace('\n', "⏎");
                if i == e.pos {
                    format!("[[{t}]]")
                } else {
                    t
                }
            })
            .collect();
        println!("{:>9.3}  {}  ({})", e.activation, ctx.trim(), e.source);
    }
    if !lowest && !s.firing_tokens.is_empty() {
        let toks: Vec<String> = s
            .firing_tokens
            .iter()
            .take(8)
            .map(|t| format!("{:?} {} ({:+.2})", t.token, t.count, t.log_odds))
            .collect();
        println!("fires most on: {}", toks.join(", "));
    }
    Ok(())
}

/// The labels of the index at `path`: the saved ones (refused if made from another scan), or
/// computed now (with the model if it opens and is the index's, with WordNet's hypernyms if the
/// index's stimuli have senses and the data files are there) and saved beside it.
fn ensure_labels(
    path: &Path,
    model_arg: Option<String>,
    recompute: bool,
) -> anyhow::Result<super::labels::Labels> {
    use super::labels::{self, Labels};
    let index = ScanIndex::load(path)?;
    let out = labels::labels_path(path);
    if out.is_file() && !recompute {
        return Ok(Labels::load_for(&out, &index)?);
    }
    let model_path = match model_arg {
        Some(p) => PathBuf::from(p),
        None => assets::default_model_path(&assets::assets_dir()),
    };
    let model = match Model::open(&model_path) {
        Ok(m) => match index.check_model(m.info()) {
            Ok(()) => Some(std::sync::Arc::new(m)),
            Err(e) => {
                eprintln!("label: computing labels without promoted tokens: {e}");
                None
            }
        },
        Err(e) => {
            eprintln!(
                "label: computing labels without promoted tokens: the model {} does not open ({e})",
                model_path.display()
            );
            None
        }
    };
    let wordnet = if index.stimuli.iter().any(|s| s.sense.is_some()) {
        let dir = assets::corpus_dir(&assets::assets_dir());
        if dir.join("data.noun").is_file() {
            Some(dir)
        } else {
            eprintln!(
                "label: no WordNet data files in {}: enrichment without hypernyms",
                dir.display()
            );
            None
        }
    } else {
        None
    };
    let index = std::sync::Arc::new(index);
    let (i, m, w, o) = (index.clone(), model.clone(), wordnet.clone(), out.clone());
    let labels = crate::jobs::progress::run_reporting("Label", move |ctx| {
        labels::job(ctx, &i, m.as_deref(), w.as_deref(), &o)
    })
    .map_err(|e| anyhow::Error::msg(e.to_string()))
    .context("labelling")?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let t = &labels.timings;
    eprintln!(
        "labels {} ({:.1} MB): {} features in {:.1} s (WordNet {:.1} s, tokens and enrichment {:.1} s, promoted tokens {:.1} s{})",
        out.display(),
        size as f64 / 1e6,
        labels.labels.len(),
        t.total,
        t.wordnet,
        t.features,
        t.promoted,
        if labels.promoted { "" } else { ": none, no model" }
    );
    Ok(labels)
}

/// `hubel label …` and `hubel search …`.
fn labels_command(command: &str, mut args: Vec<String>) -> anyhow::Result<()> {
    use crate::features::Basis;
    let index = value(&mut args, "--index")?.map(PathBuf::from);
    let model = value(&mut args, "--model")?;
    let recompute = flag(&mut args, "--recompute");
    let json = flag(&mut args, "--json");
    let n = number(&mut args, "--n")?.unwrap_or(20);
    let basis = match value(&mut args, "--basis")?.as_deref() {
        None => None,
        Some("neurons" | "n") => Some(Basis::Neurons),
        Some("heads" | "h") => Some(Basis::Heads),
        Some(b) => bail!("--basis takes neurons or heads, not `{b}`"),
    };
    if args.is_empty() {
        bail!(
            "{command} needs {}\n\nUSAGE:\n{USAGE}",
            if command == "label" {
                "a feature, e.g. `hubel label L8N1000`"
            } else {
                "a query, e.g. `hubel search left`"
            }
        );
    }
    let what = args.remove(0);
    finish(&args)?;
    let path = match index {
        Some(p) => p,
        None => newest_index()?,
    };
    if command == "search" {
        let labels = ensure_labels(&path, model, recompute)?;
        let hits = labels.search(&what, basis, n);
        if json {
            println!("{}", serde_json::to_string_pretty(&hits)?);
            return Ok(());
        }
        if hits.is_empty() {
            println!("no feature fires on {what:?} or mentions it");
        }
        for h in &hits {
            println!("{:<9} {}\n          {}", h.feature, h.text, h.why);
        }
        return Ok(());
    }
    let feature = FeatureId::parse(&what).map_err(anyhow::Error::msg)?;
    let labels = ensure_labels(&path, model, recompute)?;
    let l = labels.get(&feature).with_context(|| {
        format!(
            "{feature}: the scanned model has {} layers of {} neurons and {} heads",
            labels.layers, labels.d_mlp, labels.heads
        )
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(l)?);
        return Ok(());
    }
    println!("{feature}: {}", l.text);
    println!(
        "  density {:.3}, max {:.3}; {} top examples, of {} WordNet synsets",
        l.density, l.max, l.examples, l.stimuli
    );
    let q = |s: &str| format!("{s:?}");
    if !l.tokens.is_empty() {
        let toks: Vec<String> = l
            .tokens
            .iter()
            .map(|t| {
                format!(
                    "{} {}/{} ({:+.2})",
                    q(&t.token),
                    t.count,
                    t.corpus_count,
                    t.log_odds
                )
            })
            .collect();
        println!("  fires on (fired/corpus, log-odds): {}", toks.join(", "));
        let set: Vec<String> = l.tokens[..l.score.tokens]
            .iter()
            .map(|t| q(&t.token))
            .collect();
        println!(
            "  score of {{{}}}: F1 {:.3} (precision P(fires | token) {:.3}, recall P(token | fires) {:.3})",
            set.join(", "),
            l.score.f1,
            l.score.precision,
            l.score.recall
        );
    }
    let pairs = |v: &[super::labels::Bigram]| -> String {
        v.iter()
            .map(|b| format!("{} {} ×{}", q(&b.first), q(&b.second), b.count))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !l.before.is_empty() || !l.after.is_empty() {
        println!(
            "  at the peaks: {}{}{}",
            pairs(&l.before),
            if l.before.is_empty() || l.after.is_empty() {
                ""
            } else {
                "; "
            },
            pairs(&l.after)
        );
    }
    for e in &l.enrichment {
        println!(
            "  {} {}: {}/{} synsets of the top examples vs {}/{} scanned, p={:.1e} (×{} tested: {:.1e})",
            e.kind, e.name, e.k, e.n, e.big_k, e.big_n, e.p, l.tested, e.p_corrected
        );
    }
    let logits = |v: &[super::labels::Logit]| -> String {
        v.iter()
            .map(|t| format!("{} {:+.2}", q(&t.token), t.logit))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !l.promotes.is_empty() {
        println!("  promotes {}", logits(&l.promotes));
        println!("  suppresses {}", logits(&l.suppresses));
    } else if !labels.promoted && feature.basis == crate::features::Basis::Neurons {
        println!("  (no promoted tokens: the labels were made without the model)");
    }
    Ok(())
}
