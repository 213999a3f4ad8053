//! `hubel dict train|eval|info|export|import` and `hubel decompose`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use super::{decompose, eval, io, Method, TrainOptions, TrainSpec};
use crate::cli::{flag, number, open_model, value};
use crate::scan::Corpus;

pub const USAGE: &str = "\
  hubel dict train --method fista|topk|itda --layers 6[,8,…] --atoms N --out D.safetensors
             [--k K] [--lambda L (fista, default 2)] [--tokens N] [--epochs E] [--lr R] [--batch B] [--seconds S]
             [--encode native|pursuit] [--corpus wordnet|wordnet-examples|FILE]
             [--model PATH] [--json] [--save-rows ROWS.npy]
             learn a dictionary of residual streams (hook_resid_post of each layer; `embed` for
             the embedding) from the corpus (default 20000 tokens, position 0 left out):
             fista = one non-negative dictionary shared by the layers (Yun et al. 2021),
             topk = a top-k sparse autoencoder (default k 32), itda = atoms taken from real
             activations by matching pursuit (Leask et al. 2025); training text is drawn from
             the whole corpus, every 20th stimulus is held out; --encode pursuit: codes by
             non-negative orthogonal matching pursuit over the atoms (at most k), not the
             encoder; --save-rows writes the training rows of the first layer ([tokens, d_model]
             float32, the original space)
  hubel dict eval D [--tokens N] [--encode native|pursuit] [--corpus wordnet|wordnet-examples|FILE]
             [--model PATH] [--json] [--save-rows ROWS.npy]
             on held-out text (every 20th stimulus, never trained on; for dictionaries saved
             before that split, the corpus's last stimuli): fvu, l0, dead_frac, ce_recovered;
             --encode evaluates another encoding of the same atoms; --save-rows writes the
             held-out rows of its first hook (positions ≥ 1)
  hubel dict info D [--atoms N] [--json]
             what the dictionary is, and its first atoms with labels and examples
  hubel dict export D --saelens DIR      write a SAELens folder (cfg.json, sae_weights.safetensors)
  hubel dict import DIR --out D [--tokens N] [--model PATH]
             read a SAELens folder, label its atoms on the corpus, save it as ours
  hubel decompose --word WORD --dict D [--context TEXT] [--layer L] [--top N] [--json]
             a word's residual (alone, or in TEXT) written as the dictionary's atoms";

fn finish(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        bail!("unexpected argument `{a}`\n\nUSAGE:\n{USAGE}");
    }
    Ok(())
}

/// `wordnet` (glosses and examples), `wordnet-examples` (example sentences only), or a text
/// file or folder.
pub fn open_corpus(name: Option<String>) -> anyhow::Result<Corpus> {
    let name = name.unwrap_or_else(|| "wordnet".into());
    Ok(match name.as_str() {
        "wordnet" | "wordnet-examples" => {
            let dir = crate::assets::corpus_dir(&crate::assets::assets_dir());
            let mut c =
                Corpus::wordnet(&dir).context("the WordNet corpus: run `hubel fetch --corpus`")?;
            if name == "wordnet-examples" {
                c.stimuli
                    .retain(|s| s.sense.as_ref().is_some_and(|s| s.kind == "example"));
                c.name = "wordnet-3.1-examples".into();
            }
            c
        }
        _ => Corpus::text(Path::new(&name))?,
    })
}

fn open_dict(path: &str) -> anyhow::Result<super::Dictionary> {
    io::load(Path::new(path)).with_context(|| format!("opening the dictionary {path}"))
}

pub fn command(name: &str, mut args: Vec<String>) -> anyhow::Result<()> {
    if name == "decompose" {
        return decompose_command(args);
    }
    if args.is_empty() {
        bail!("hubel dict needs a subcommand\n\nUSAGE:\n{USAGE}");
    }
    let sub = args.remove(0);
    match sub.as_str() {
        "train" => train(args),
        "eval" => evaluate(args),
        "info" => info(args),
        "export" => export(args),
        "import" => import(args),
        other => bail!("unknown subcommand `dict {other}`\n\nUSAGE:\n{USAGE}"),
    }
}

fn positional(args: &mut Vec<String>, what: &str) -> anyhow::Result<String> {
    match args.iter().position(|a| !a.starts_with("--")) {
        Some(i) => Ok(args.remove(i)),
        None => bail!("give {what}\n\nUSAGE:\n{USAGE}"),
    }
}

fn train(mut args: Vec<String>) -> anyhow::Result<()> {
    let method = Method::parse(
        &value(&mut args, "--method")?.context("--method fista|topk|itda is needed")?,
    )?;
    let layers = value(&mut args, "--layers")?.context("--layers 6[,8,…] is needed")?;
    let atoms = number(&mut args, "--atoms")?.context("--atoms N is needed")?;
    let out = PathBuf::from(value(&mut args, "--out")?.context("--out D.safetensors is needed")?);
    let mut opts = TrainOptions::new(method, atoms);
    if let Some(k) = number(&mut args, "--k")? {
        opts.k = k;
    }
    if let Some(e) = number(&mut args, "--epochs")? {
        opts.epochs = e.max(1);
    }
    if let Some(l) = value(&mut args, "--lambda")? {
        opts.lambda = l
            .parse()
            .with_context(|| format!("--lambda expects a number, got `{l}`"))?;
    }
    if let Some(l) = value(&mut args, "--lr")? {
        opts.lr = l
            .parse()
            .ok()
            .filter(|v: &f32| v.is_finite() && *v > 0.0)
            .with_context(|| format!("--lr expects a positive number, got `{l}`"))?;
    }
    if let Some(b) = number(&mut args, "--batch")? {
        opts.batch = b.max(1);
    }
    if let Some(s) = number(&mut args, "--seconds")? {
        opts.max_seconds = Some(s.max(1) as f32);
    }
    if let Some(e) = value(&mut args, "--encode")? {
        opts.encoding = super::Encoding::parse(&e)?;
        super::check_encoding(&opts)?;
    }
    let tokens = number(&mut args, "--tokens")?.unwrap_or(20_000);
    let corpus = value(&mut args, "--corpus")?;
    let model = value(&mut args, "--model")?;
    let json = flag(&mut args, "--json");
    let save_rows = value(&mut args, "--save-rows")?.map(PathBuf::from);
    finish(&args)?;
    if atoms == 0 || atoms > 1 << 20 {
        bail!("--atoms must be between 1 and 1048576, not {atoms}");
    }
    if tokens == 0 || tokens > 50_000_000 {
        bail!("--tokens must be between 1 and 50000000, not {tokens}");
    }
    let model = Arc::new(open_model(model)?);
    let hooks = super::parse_layers(&layers, model.info().layers)?;
    let corpus = Arc::new(open_corpus(corpus)?);
    let spec = TrainSpec {
        hooks,
        tokens,
        opts,
    };
    eprintln!(
        "dict: {} {} atoms on {} of {} ({} tokens at positions ≥ 1)",
        method.name(),
        atoms,
        spec.hooks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        corpus.name,
        tokens
    );
    if let Some(path) = &save_rows {
        // The same rows training collects (collection is deterministic), for a reference
        // trainer outside hubel (tools/bench/dictionary.py).
        let acts = super::collect(&model, &corpus, &spec.hooks[..1], tokens, None)?;
        crate::npy::write_f32(path, &[acts.len(), acts.d], &acts.data[0])
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let (m, c) = (model.clone(), corpus.clone());
    let dict = crate::jobs::progress::run_reporting("Dictionary", move |ctx| {
        let mut last = std::time::Instant::now();
        let mut on_point = |p: &super::TrainPoint, _: &super::Dictionary| {
            if last.elapsed().as_secs_f32() >= 5.0 {
                eprintln!(
                    "  epoch {:.2}: fvu {:.4}  l0 {:.1}  dead {:.1}%  ({:.0} s)",
                    p.epoch,
                    p.fvu,
                    p.l0,
                    100.0 * p.dead_frac,
                    p.seconds
                );
                last = std::time::Instant::now();
            }
            Ok(())
        };
        Ok(super::train_job(Some(ctx), &m, &c, &spec, &mut on_point)?)
    })
    .map_err(|e| anyhow::Error::msg(e.to_string()))
    .context("training the dictionary")?;
    io::save(&dict, &out)?;
    let p = dict.config.trained.unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "out": out,
                "config": dict.config,
            }))?
        );
    } else {
        println!(
            "dictionary {} ({})\ntrained on {} tokens in {:.1} s: fvu {:.4} (normalised space, \
             training rows), l0 {:.1}, dead {:.1}%",
            out.display(),
            dict.title(),
            dict.config.tokens,
            p.seconds,
            p.fvu,
            p.l0,
            100.0 * p.dead_frac
        );
    }
    Ok(())
}

fn evaluate(mut args: Vec<String>) -> anyhow::Result<()> {
    let tokens = number(&mut args, "--tokens")?.unwrap_or(5_000);
    let encoding = value(&mut args, "--encode")?
        .map(|e| super::Encoding::parse(&e))
        .transpose()?;
    let corpus = value(&mut args, "--corpus")?;
    let model = value(&mut args, "--model")?;
    let json = flag(&mut args, "--json");
    let save_rows = value(&mut args, "--save-rows")?.map(PathBuf::from);
    let path = positional(&mut args, "a dictionary file")?;
    finish(&args)?;
    if tokens == 0 || tokens > 10_000_000 {
        bail!("--tokens must be between 1 and 10000000, not {tokens}");
    }
    let mut dict = open_dict(&path)?;
    if let Some(e) = encoding {
        dict = dict.with_encoding(e)?;
    }
    let dict = Arc::new(dict);
    let model = Arc::new(open_model(model)?);
    check_model(&dict, &model)?;
    let corpus = open_corpus(corpus)?;
    if !dict.config.corpus.is_empty() && dict.config.corpus != corpus.name {
        bail!(
            "this dictionary was trained on {}, not {}: its held-out text must come from the same \
             corpus (pass --corpus {})",
            dict.config.corpus,
            corpus.name,
            if dict.config.corpus.ends_with("-examples") {
                "wordnet-examples"
            } else if dict.config.corpus.starts_with("wordnet") {
                "wordnet"
            } else {
                "FILE"
            }
        );
    }
    let windows = eval::heldout_windows(
        &model,
        &corpus,
        tokens,
        dict.config.split,
        dict.config.stimuli,
    )?;
    if let Some(out) = &save_rows {
        let hook = dict.config.hooks[0];
        let d = dict.d();
        let seqs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
        let last = hook.layer().unwrap_or(0);
        let records =
            model.run_batch_through(&seqs, &crate::hooks::Capture::points([hook]), last, None)?;
        let mut rows = Vec::new();
        for r in &records {
            let act = r
                .get(hook)
                .with_context(|| format!("{hook} was not recorded"))?;
            // Positions ≥ 1, as the evaluation reads them.
            rows.extend_from_slice(&act.data[d.min(act.data.len())..]);
        }
        crate::npy::write_f32(out, &[rows.len() / d, d], &rows)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let (m, d) = (model.clone(), dict.clone());
    let report = crate::jobs::progress::run_reporting("Evaluate", move |ctx| {
        Ok(eval::evaluate(&m, &d, &windows, Some(ctx))?)
    })
    .map_err(|e| anyhow::Error::msg(e.to_string()))
    .context("evaluating the dictionary")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} on {} held-out tokens of {}\nfvu {:.4}  l0 {:.1}  dead {:.1}%  ce_recovered {:.3} \
             (loss: clean {:.3}, spliced {:.3}, mean-ablated {:.3})",
            dict.title(),
            report.tokens,
            corpus.name,
            report.fvu,
            report.l0,
            100.0 * report.dead_frac,
            report.ce_recovered,
            report.nll_clean,
            report.nll_spliced,
            report.nll_mean_ablated
        );
    }
    Ok(())
}

/// A dictionary trained on another model's residuals says nothing about this one.
fn check_model(dict: &super::Dictionary, model: &crate::model::Model) -> anyhow::Result<()> {
    let sha = &dict.config.model_sha256;
    if !sha.is_empty() && *sha != model.info().sha256 {
        bail!(
            "this dictionary was learnt on {} (sha256 {sha}), not on the open model {} (sha256 {}): \
             pass --model with that model",
            dict.config.model,
            model.info().name,
            model.info().sha256
        );
    }
    if dict.d() != model.info().d_model {
        bail!(
            "this dictionary reads {} dimensions; the model's residual stream has {}",
            dict.d(),
            model.info().d_model
        );
    }
    Ok(())
}

fn info(mut args: Vec<String>) -> anyhow::Result<()> {
    let show = number(&mut args, "--atoms")?.unwrap_or(10);
    let json = flag(&mut args, "--json");
    let path = positional(&mut args, "a dictionary file")?;
    finish(&args)?;
    let dict = open_dict(&path)?;
    if json {
        let atoms: Vec<_> = dict.info.iter().take(show).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "config": dict.config,
                "atoms": atoms,
            }))?
        );
        return Ok(());
    }
    println!("{}", dict.title());
    println!(
        "model {} · corpus {} · {} training tokens",
        dict.config.model, dict.config.corpus, dict.config.tokens
    );
    if let Some(p) = dict.config.trained {
        println!(
            "trained {:.1} s: fvu {:.4} (normalised, training rows), l0 {:.1}, dead {:.1}%",
            p.seconds,
            p.fvu,
            p.l0,
            100.0 * p.dead_frac
        );
    }
    for (j, a) in dict.info.iter().enumerate().take(show) {
        println!("D{j:<5} {:<40} density {:.4}", a.label, a.density);
        for e in a.examples.iter().take(2) {
            println!(
                "        {:.2}  …{}[{}]{}",
                e.value, e.before, e.token, e.after
            );
        }
    }
    Ok(())
}

fn export(mut args: Vec<String>) -> anyhow::Result<()> {
    let dir = value(&mut args, "--saelens")?.context("--saelens DIR is needed")?;
    let path = positional(&mut args, "a dictionary file")?;
    finish(&args)?;
    let dict = open_dict(&path)?;
    io::export_saelens(&dict, Path::new(&dir))?;
    println!("SAELens folder {dir} ({})", dict.title());
    if dict.config.encoding == super::Encoding::Pursuit {
        eprintln!(
            "note: this dictionary codes rows by pursuit over its atoms; SAELens's format carries \
             its encoder, which SAELens will use instead"
        );
    }
    Ok(())
}

fn import(mut args: Vec<String>) -> anyhow::Result<()> {
    let out = PathBuf::from(value(&mut args, "--out")?.context("--out D.safetensors is needed")?);
    let tokens = number(&mut args, "--tokens")?.unwrap_or(20_000);
    let corpus = value(&mut args, "--corpus")?;
    let model = value(&mut args, "--model")?;
    let dir = positional(&mut args, "a SAELens folder")?;
    finish(&args)?;
    let mut dict = io::import_saelens(Path::new(&dir))?;
    let model = open_model(model)?;
    check_model(&dict, &model)?;
    let corpus = open_corpus(corpus)?;
    let acts = super::collect(&model, &corpus, &dict.config.hooks, tokens, None)?;
    decompose::describe(&mut dict, &acts, &model);
    dict.config.model_sha256 = model.info().sha256.clone();
    dict.config.corpus = corpus.name.clone();
    io::save(&dict, &out)?;
    println!(
        "{} ({}) saved as {}, atoms labelled on {} tokens of {}",
        dir,
        dict.title(),
        out.display(),
        acts.len(),
        corpus.name
    );
    Ok(())
}

fn decompose_command(mut args: Vec<String>) -> anyhow::Result<()> {
    let word = value(&mut args, "--word")?.context("--word WORD is needed")?;
    let path = value(&mut args, "--dict")?.context("--dict D is needed")?;
    let context = value(&mut args, "--context")?;
    let layer = number(&mut args, "--layer")?;
    let top = number(&mut args, "--top")?.unwrap_or(10);
    let model = value(&mut args, "--model")?;
    let json = flag(&mut args, "--json");
    finish(&args)?;
    let dict = open_dict(&path)?;
    let model = open_model(model)?;
    check_model(&dict, &model)?;
    let hook = decompose::hook_for(&dict, layer)?;
    let d = decompose::decompose(&model, &dict, &word, context.as_deref(), hook, top)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d.parts)?);
        return Ok(());
    }
    println!(
        "{:?} read at token {} ({:?}), {}: {} atoms, unexplained {:.1}%",
        d.text,
        d.position,
        d.token,
        d.hook,
        d.parts.len(),
        100.0 * d.residual_fraction
    );
    for p in &d.parts {
        println!(
            "  {:>7.3} × {:<7} {:<36} {}",
            p.coef,
            p.feature,
            p.label,
            p.top_tokens.join(", ")
        );
    }
    Ok(())
}
