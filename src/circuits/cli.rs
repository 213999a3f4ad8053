//! `hubel lens`, `hubel dla` and `hubel patch`: arguments in, a report out (a table or JSON).

use anyhow::{bail, Context};

use super::dla::{self, DlaRequest};
use super::lens::{self, LensRequest};
use super::patch::{self, Fit, PatchRequest, Site};
use crate::cli::{flag, number, open_model, value};
use crate::hooks::Intervention;

pub const USAGE: &str = "\
  hubel lens --text TEXT [--target TOKEN] [--ablate SPEC]... [--top K] [--model PATH] [--json]
             the logit lens: each layer's residual stream (hook_resid_post) through the final
             norm and the unembedding, at every position: the top K tokens (default 5), the
             target's probability and rank, and the layer from which each position's final
             top-1 token stays top-1; with --ablate, the baseline's grid too
  hubel dla --text TEXT --target TOKEN [--versus TOKEN] [--position P] [--neurons N]
            [--ablate SPEC]... [--model PATH] [--json]
             direct logit attribution at position P (default: the last): what the embedding,
             every head, every MLP and every neuron writes along the target's logit direction
             (minus the versus token's), the final norm's scale frozen; sorted by |value|;
             with --ablate, of the run with those edits
  hubel patch --clean TEXT --corrupt TEXT --target TOKEN [--versus TOKEN]
              [--site resid|attn|mlp] [--fit pad|trim] [--model PATH] [--json]
             activation patching: the corrupted prompt with the clean run's value at one layer ×
             position (blocks.L.hook_resid_pre, hook_attn_out or hook_mlp_out), every cell; each
             cell is the fraction of logit(target) − logit(versus) at the last position that the
             patch restores (0 where clean and corrupted agree: 0/0 is 0); prompts of different
             token lengths are refused, or with --fit pad the shorter gets filler tokens (\" the\")
             after its first token, with --fit trim the longer loses its extra tokens there
TOKEN is text that is exactly one token, usually with its leading space: \" Paris\".";

fn finish(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        bail!("unexpected argument `{a}`\n\nUSAGE:\n{USAGE}");
    }
    Ok(())
}

/// `hubel lens|dla|patch …` (`args` after the command's name).
pub fn command(command: &str, args: Vec<String>) -> anyhow::Result<()> {
    match command {
        "lens" => lens_command(args),
        "dla" => dla_command(args),
        "patch" => patch_command(args),
        other => bail!("unknown circuits command `{other}`"),
    }
}

fn lens_command(mut args: Vec<String>) -> anyhow::Result<()> {
    let text = value(&mut args, "--text")?.context("lens needs --text TEXT")?;
    let target = value(&mut args, "--target")?;
    let ablate = ablations(&mut args)?;
    let top = number(&mut args, "--top")?.unwrap_or(lens::DEFAULT_TOP);
    if !(1..=50).contains(&top) {
        bail!("--top takes 1 to 50 tokens a cell, got {top}");
    }
    let json = flag(&mut args, "--json");
    let model_path = value(&mut args, "--model")?;
    finish(&args)?;
    let model = open_model(model_path)?;
    let interventions = edits(&model, &ablate)?;
    let report = lens::run(
        &model,
        &LensRequest {
            text,
            target,
            interventions,
            top,
        },
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", lens::render(&report));
    }
    Ok(())
}

/// Every `--ablate SPEC` taken out of `args`.
fn ablations(args: &mut Vec<String>) -> anyhow::Result<Vec<String>> {
    let mut ablate = Vec::new();
    while let Some(spec) = value_once(args, "--ablate")? {
        ablate.push(spec);
    }
    Ok(ablate)
}

/// The `--ablate` specs as interventions, checked against the model.
fn edits(model: &crate::model::Model, specs: &[String]) -> anyhow::Result<Vec<Intervention>> {
    let units = |hook| model.hook_units(hook).map_err(|e| e.to_string());
    let bounds = crate::hooks::spec::Bounds {
        n_ctx: Some(model.config().n_ctx),
        units: Some(&units),
    };
    Ok(specs
        .iter()
        .map(|s| crate::hooks::spec::parse_bounded(s, &bounds))
        .collect::<Result<Vec<_>, _>>()?)
}

/// The first `--name VALUE` taken out of `args` (repeatable flags: call until `None`).
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

fn dla_command(mut args: Vec<String>) -> anyhow::Result<()> {
    let text = value(&mut args, "--text")?.context("dla needs --text TEXT")?;
    let target = value(&mut args, "--target")?
        .context("dla needs --target TOKEN (one token, e.g. \" Paris\")")?;
    let versus = value(&mut args, "--versus")?;
    let position = number(&mut args, "--position")?;
    let neurons = number(&mut args, "--neurons")?.unwrap_or(dla::DEFAULT_NEURONS);
    let ablate = ablations(&mut args)?;
    let json = flag(&mut args, "--json");
    let model_path = value(&mut args, "--model")?;
    finish(&args)?;
    let model = open_model(model_path)?;
    let interventions = edits(&model, &ablate)?;
    let report = dla::run(
        &model,
        &DlaRequest {
            text,
            target,
            versus,
            position,
            neurons,
            interventions,
        },
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", dla::render(&report, 15));
    }
    Ok(())
}

fn patch_command(mut args: Vec<String>) -> anyhow::Result<()> {
    let clean = value(&mut args, "--clean")?.context("patch needs --clean TEXT")?;
    let corrupt = value(&mut args, "--corrupt")?.context("patch needs --corrupt TEXT")?;
    let target = value(&mut args, "--target")?
        .context("patch needs --target TOKEN (one token, e.g. \" Paris\")")?;
    let versus = value(&mut args, "--versus")?;
    let site = match value(&mut args, "--site")? {
        Some(s) => Site::parse(&s).map_err(anyhow::Error::msg)?,
        None => Site::Resid,
    };
    let fit = value(&mut args, "--fit")?
        .map(|s| Fit::parse(&s).map_err(anyhow::Error::msg))
        .transpose()?;
    let json = flag(&mut args, "--json");
    let model_path = value(&mut args, "--model")?;
    finish(&args)?;
    let model = open_model(model_path)?;
    let req = PatchRequest {
        clean,
        corrupt,
        target,
        versus,
        site,
        fit,
    };
    let report = crate::jobs::progress::run_reporting("Causal trace", move |ctx| {
        patch::run(&model, &req, Some(ctx)).map_err(Into::into)
    })
    .map_err(|e| anyhow::Error::msg(e.to_string()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", patch::render(&report));
    }
    Ok(())
}
