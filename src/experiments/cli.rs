//! `hubel experiment list|run` and `hubel lesion`: arguments in, a report out (a table, JSON, or
//! a report folder).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};

use super::lesion::{self, Ablation};
use super::{selectivity, Runner};
use crate::cli::{flag, number, open_model, value};
use crate::corpus::protocol::{self, Kind};
use crate::features::FeatureId;

pub const USAGE: &str = "\
  hubel experiment list
             the built-in protocols (assets/protocols/*.json)
  hubel experiment run NAME|FILE [--model PATH] [--json] [--out DIR] [--shuffles N] [--folds K]
             [--top-n N] [--draws N] [--units L1N2,L3N4] [--dict D.safetensors]
             run a protocol: selectivity (d′ and AUROC of every MLP neuron at the reading
             position, and with --dict of every feature of that dictionary at the layers it
             reads, each layer's max |d′| against a label-shuffle null, CV probes on the
             residual stream, the embedding as the floor), induction (every head's score on
             repeated sequences and on controls, the loss on each copy) or lesion (top-N
             selective, random and hand-picked groups ablated by zero, mean and resample, scored
             on held-out text); --out DIR writes report.md, report.json and figures (PNG)
  hubel experiment dose NAME|FILE --units L10N123[,L5H3] --probe TEXT [--mode scale|add]
             [--range FROM:TO:N] [--target TOKEN] [--freeze-attention] [--model PATH] [--json]
             [--out DIR]
             dose–response: the features scaled (default range 0:3:7) or shifted (-8:8:9) at
             positions 1..; at each strength KL(clean ‖ dosed) and p(target) at the probe's last
             position and the mean loss per token of the protocol's sets (held-out if it has
             them); --freeze-attention holds every layer's pattern at the clean run's
  hubel experiment fit NAME|FILE (--unit L10N123 | --probe-layer L) --out FILE.json
             [--folds K] [--model PATH]
             save a discriminator: a neuron with a threshold halfway between the sets' means, or
             a logistic probe on hook_resid_post; prints its accuracy (fitted and cross-validated)
  hubel experiment classify FILE.json --text TEXT [--text TEXT]... [--model PATH] [--json]
             apply a saved discriminator to new text ([[target]] marks the token read)
  hubel lesion --units L1N971,L9N448 --ablation zero|mean|resample --sets NAME|FILE
             [--model PATH] [--seed N] [--json]
             ablate those neurons (positions 1..; mean: each unit's mean over the protocol's
             stimuli) and score the protocol's held-out sets: mean loss per predicted token";

fn finish(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        bail!("unexpected argument `{a}`\n\nUSAGE:\n{USAGE}");
    }
    Ok(())
}

/// `L1N971,L9N448` (commas or spaces) → features.
pub fn parse_units(list: &str) -> anyhow::Result<Vec<FeatureId>> {
    let units: Vec<FeatureId> = list
        .split([',', ' '])
        .filter(|s| !s.trim().is_empty())
        .map(|s| FeatureId::parse(s.trim()).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    if units.is_empty() {
        bail!("no units: give one or more features, e.g. L10N123, L12N7");
    }
    Ok(units)
}

/// `hubel experiment …` (`args` after the word `experiment`) or `hubel lesion …`.
pub fn command(command: &str, mut args: Vec<String>) -> anyhow::Result<()> {
    if command == "lesion" {
        return lesion_command(args);
    }
    let sub = if args.is_empty() {
        bail!("experiment needs `list` or `run NAME|FILE`\n\nUSAGE:\n{USAGE}");
    } else {
        args.remove(0)
    };
    match sub.as_str() {
        "list" => {
            finish(&args)?;
            for name in protocol::built_in_names() {
                let p = protocol::built_in(name).expect("listed")?;
                println!(
                    "{name:<16} {:<12} {} ({} vs {}: {} + {} stimuli)",
                    p.kind.name(),
                    p.description,
                    p.sets.a.label,
                    p.sets.b.label,
                    p.sets.a.stimuli.len(),
                    p.sets.b.stimuli.len()
                );
            }
            Ok(())
        }
        "run" => run_command(args),
        "dose" => dose_command(args),
        "fit" => fit_command(args),
        "classify" => classify_command(args),
        other => bail!("unknown experiment command `{other}`\n\nUSAGE:\n{USAGE}"),
    }
}

fn run_command(mut args: Vec<String>) -> anyhow::Result<()> {
    let model_path = value(&mut args, "--model")?;
    let json = flag(&mut args, "--json");
    let out = value(&mut args, "--out")?.map(PathBuf::from);
    let mut sel = selectivity::Settings::default();
    if let Some(path) = value(&mut args, "--dict")? {
        let dict = crate::features::dictionary::io::load(std::path::Path::new(&path))
            .with_context(|| format!("opening the dictionary {path}"))?;
        sel.dictionary = Some(std::sync::Arc::new(dict));
    }
    if let Some(n) = number(&mut args, "--shuffles")? {
        if !(20..=100_000).contains(&n) {
            bail!("--shuffles takes 20 to 100000 label shuffles (200 or more for a 95% band), got {n}");
        }
        sel.shuffles = n;
    }
    if let Some(k) = number(&mut args, "--folds")? {
        if !(2..=20).contains(&k) {
            bail!("--folds takes 2 to 20 folds, got {k}");
        }
        sel.folds = k;
    }
    let mut les = lesion::Settings::default();
    if let Some(n) = number(&mut args, "--top-n")? {
        if n == 0 || n > 10_000 {
            bail!("--top-n takes 1 to 10000 neurons a group, got {n}");
        }
        les.top_n = n;
    }
    if let Some(n) = number(&mut args, "--draws")? {
        if n > 100 {
            bail!("--draws takes 0 to 100 random groups, got {n}");
        }
        les.random_draws = n;
    }
    if let Some(list) = value(&mut args, "--units")? {
        les.units = parse_units(&list)?;
    }
    if args.is_empty() {
        bail!(
            "experiment run needs a protocol: one of {} or a .json file\n\nUSAGE:\n{USAGE}",
            protocol::built_in_names().join(", ")
        );
    }
    let which = args.remove(0);
    finish(&args)?;
    let protocol = protocol::resolve(&which)?;
    if !les.units.is_empty() && protocol.kind != Kind::Lesion {
        bail!(
            "--units is for lesion protocols; `{}` is a {} protocol",
            protocol.name,
            protocol.kind.name()
        );
    }
    let model = Arc::new(open_model(model_path)?);
    let started = std::time::Instant::now();
    let (m, p) = (model.clone(), protocol.clone());
    let report = crate::jobs::progress::run_reporting(
        &format!("Experiment {}", protocol.name),
        move |ctx| {
            let runner = Runner::new(&m, Some(ctx));
            Ok(super::run_with(&runner, &p, &sel, &les)?)
        },
    )
    .map_err(|e| anyhow::Error::msg(e.to_string()))
    .with_context(|| format!("running the experiment `{}`", protocol.name))?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(dir) = &out {
        let written =
            super::report::write_folder(dir, &report, &protocol, &model.info().name, seconds)
                .with_context(|| format!("writing the report folder {}", dir.display()))?;
        eprintln!("report: {} ({} files)", dir.display(), written.len());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
        eprintln!("{:.1} s", seconds);
    }
    Ok(())
}

fn lesion_command(mut args: Vec<String>) -> anyhow::Result<()> {
    let units =
        value(&mut args, "--units")?.context("lesion needs --units, e.g. --units L10N123,L12N7")?;
    let units = parse_units(&units)?;
    let ablation = match value(&mut args, "--ablation")? {
        Some(a) => Ablation::parse(&a).map_err(anyhow::Error::msg)?,
        None => Ablation::Zero,
    };
    let sets = value(&mut args, "--sets")?
        .context("lesion needs --sets PROTOCOL (a built-in name such as lesion-zh-en, or a .json file with held-out sets)")?;
    let seed = number(&mut args, "--seed")?.unwrap_or(1) as u64;
    let json = flag(&mut args, "--json");
    let model_path = value(&mut args, "--model")?;
    finish(&args)?;
    let protocol = protocol::resolve(&sets)?;
    let model = Arc::new(open_model(model_path)?);
    let m = model.clone();
    let name = protocol.name.clone();
    let units2 = units.clone();
    let r = crate::jobs::progress::run_reporting("Lesion", move |ctx| {
        let runner = Runner::new(&m, Some(ctx));
        Ok(lesion::run_units(
            &runner, &protocol, &units2, ablation, seed,
        )?)
    })
    .map_err(|e| anyhow::Error::msg(e.to_string()))
    .with_context(|| format!("the lesion on `{name}`"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} ablated ({}) at positions {}",
            units
                .iter()
                .map(FeatureId::label)
                .collect::<Vec<_>>()
                .join(" "),
            ablation.name(),
            lesion::POSITIONS
        );
        println!(
            "{:<4} {:>9} {:>9} {:>8} {:>7}",
            "set", "baseline", "ablated", "Δ", "tokens"
        );
        for (s, b, a, t) in [
            ("A", r.baseline.a, r.ablated.a, r.tokens.a),
            ("B", r.baseline.b, r.ablated.b, r.tokens.b),
        ] {
            println!("{s:<4} {b:>9.4} {a:>9.4} {:>+8.4} {t:>7}", a - b);
        }
        if ablation == Ablation::Zero {
            println!("caveat: {}", lesion::CAVEAT);
        }
    }
    Ok(())
}

/// The protocol named by the first remaining argument.
fn protocol_arg(args: &mut Vec<String>, what: &str) -> anyhow::Result<protocol::Protocol> {
    if args.is_empty() || args[0].starts_with("--") {
        bail!(
            "experiment {what} needs a protocol: one of {} or a .json file\n\nUSAGE:\n{USAGE}",
            protocol::built_in_names().join(", ")
        );
    }
    Ok(protocol::resolve(&args.remove(0))?)
}

fn dose_command(mut args: Vec<String>) -> anyhow::Result<()> {
    use super::dose::{self, Mode};
    let units = parse_units(
        &value(&mut args, "--units")?.context("dose needs --units, e.g. --units L10N123")?,
    )?;
    let probe = value(&mut args, "--probe")?
        .context("dose needs --probe TEXT (its next token is watched)")?;
    let mode = match value(&mut args, "--mode")? {
        Some(m) => Mode::parse(&m).map_err(anyhow::Error::msg)?,
        None => Mode::Scale,
    };
    let strengths = match value(&mut args, "--range")? {
        Some(r) => dose::parse_range(&r).map_err(anyhow::Error::msg)?,
        None => dose::parse_range(match mode {
            Mode::Scale => "0:3:7",
            Mode::Add => "-8:8:9",
        })
        .map_err(anyhow::Error::msg)?,
    };
    let target = value(&mut args, "--target")?;
    let freeze = flag(&mut args, "--freeze-attention");
    let json = flag(&mut args, "--json");
    let out = value(&mut args, "--out")?.map(PathBuf::from);
    let model_path = value(&mut args, "--model")?;
    let protocol = protocol_arg(&mut args, "dose")?;
    finish(&args)?;
    let model = Arc::new(open_model(model_path)?);
    let settings = dose::Settings {
        units,
        mode,
        strengths,
        freeze_attention: freeze,
        probe,
        target,
    };
    let started = std::time::Instant::now();
    let (m, p) = (model.clone(), protocol.clone());
    let report = crate::jobs::progress::run_reporting("Dose–response", move |ctx| {
        Ok(dose::run(&Runner::new(&m, Some(ctx)), &p, &settings)?)
    })
    .map_err(|e| anyhow::Error::msg(e.to_string()))
    .context("the dose–response run")?;
    let report = super::Report::Dose(report);
    if let Some(dir) = &out {
        super::report::write_folder(
            dir,
            &report,
            &protocol,
            &model.info().name,
            started.elapsed().as_secs_f64(),
        )
        .with_context(|| format!("writing the report folder {}", dir.display()))?;
        eprintln!("report: {}", dir.display());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

fn fit_command(mut args: Vec<String>) -> anyhow::Result<()> {
    use super::discriminator::{self, Which};
    let unit = value(&mut args, "--unit")?;
    let layer = number(&mut args, "--probe-layer")?;
    let which = match (unit, layer) {
        (Some(u), None) => Which::Unit(FeatureId::parse(&u).map_err(anyhow::Error::msg)?),
        (None, Some(l)) => Which::Probe(l),
        _ => bail!("fit needs one of --unit L10N123 or --probe-layer L"),
    };
    let out = PathBuf::from(value(&mut args, "--out")?.context("fit needs --out FILE.json")?);
    let folds = number(&mut args, "--folds")?.unwrap_or(5);
    if !(2..=20).contains(&folds) {
        bail!("--folds takes 2 to 20 folds, got {folds}");
    }
    let model_path = value(&mut args, "--model")?;
    let protocol = protocol_arg(&mut args, "fit")?;
    finish(&args)?;
    let model = open_model(model_path)?;
    let d = discriminator::fit(
        &Runner::new(&model, None),
        &protocol,
        which,
        folds,
        super::SEED,
    )?;
    d.save(&out)
        .with_context(|| format!("saving {}", out.display()))?;
    println!("{}\nsaved as {}", d.describe(), out.display());
    Ok(())
}

fn classify_command(mut args: Vec<String>) -> anyhow::Result<()> {
    let texts = {
        let mut t = Vec::new();
        while let Some(v) = value_once(&mut args, "--text")? {
            t.push(v);
        }
        t
    };
    if texts.is_empty() {
        bail!("classify needs --text TEXT (one or more)");
    }
    let json = flag(&mut args, "--json");
    let model_path = value(&mut args, "--model")?;
    if args.is_empty() {
        bail!("classify needs the discriminator's file (from `hubel experiment fit`)");
    }
    let file = args.remove(0);
    finish(&args)?;
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    let d = super::discriminator::Discriminator::from_json(&file, &text)?;
    let model = open_model(model_path)?;
    let out = d.classify(&model, &texts)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"discriminator": d.describe(), "results": out})
            )?
        );
    } else {
        println!("{}", d.describe());
        for c in &out {
            println!(
                "{:<4} {:<24} {:>+9.3} (threshold {:+.3}) at {:?} (position {}): {}",
                c.says.name(),
                c.label,
                c.value,
                c.threshold,
                c.token,
                c.position,
                c.text
            );
        }
    }
    Ok(())
}

/// The first `--name VALUE` taken out of `args` (repeated flags are read one at a time).
fn value_once(args: &mut Vec<String>, name: &str) -> anyhow::Result<Option<String>> {
    let Some(i) = args
        .iter()
        .position(|a| a == name || a.starts_with(&format!("{name}=")))
    else {
        return Ok(None);
    };
    if let Some(v) = args[i].strip_prefix(&format!("{name}=")) {
        let v = v.to_string();
        args.remove(i);
        return Ok(Some(v));
    }
    if i + 1 >= args.len() {
        bail!("{name} needs a value");
    }
    let v = args.remove(i + 1);
    args.remove(i);
    Ok(Some(v))
}
