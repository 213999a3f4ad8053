//! Activation patching (causal tracing, Meng et al. 2022): the corrupted prompt run with one
//! cell of the clean prompt's run patched in, for every layer × position, and how much of the
//! clean − corrupted difference in a metric each patch restores.
//!
//! `m = logit(target) − logit(versus)` at the last position (`logit(target)` without a versus
//! token); the cell `[L][p]` is `(m_patched − m_corrupt) / (m_clean − m_corrupt)`, where
//! `m_patched` is the corrupted run with the clean run's value at layer L, position p only:
//! `blocks.L.hook_resid_pre` (site `resid`), `blocks.L.hook_attn_out` (`attn`) or
//! `blocks.L.hook_mlp_out` (`mlp`). A patch is an [`Op::MeanOf`] at that one position: the slice
//! set to the clean run's vector. When the clean and corrupted metrics are equal (within
//! [`FLAT`]) there is nothing to restore and every cell is 0 (0/0 is defined as 0).
//!
//! The cells run batched: many copies of the corrupted prompt, each with its own patch, in one
//! forward that starts at the batch's first patched layer from the corrupted run's cached input
//! of that block ([`Model::rerun_batch_each`]; each copy gets exactly the bits it gets alone), with
//! the job's checkpoint between batches. Cells go layer by layer, so a batch spans few layers and
//! a trace costs about half of its runs' full forwards.

use serde::Serialize;

use super::{single_token, tokenize, CircuitError, Result, TokenRef};
use crate::hooks::{ActivationRecord, BlockSite, Capture, HookPoint, Intervention, Op};
use crate::jobs::JobCtx;
use crate::model::{Logits, Model, ModelError};

/// Below this |m_clean − m_corrupt| the trace has nothing to restore: every cell is 0.
pub const FLAT: f32 = 1e-6;

/// Tokens of corrupted copies run in one batched forward.
pub const BATCH_TOKENS: usize = 1024;

/// Where a patch goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// `blocks.L.hook_resid_pre`: the residual stream entering layer L.
    #[default]
    Resid,
    /// `blocks.L.hook_attn_out`: layer L's attention output.
    Attn,
    /// `blocks.L.hook_mlp_out`: layer L's MLP output.
    Mlp,
}

impl Site {
    pub const ALL: [Site; 3] = [Site::Resid, Site::Attn, Site::Mlp];

    pub fn name(self) -> &'static str {
        match self {
            Site::Resid => "resid",
            Site::Attn => "attn",
            Site::Mlp => "mlp",
        }
    }

    /// What a user reads: "residual stream", "attention output", "MLP output".
    pub fn title(self) -> &'static str {
        match self {
            Site::Resid => "residual stream",
            Site::Attn => "attention output",
            Site::Mlp => "MLP output",
        }
    }

    pub fn parse(s: &str) -> std::result::Result<Site, String> {
        Site::ALL
            .into_iter()
            .find(|site| site.name() == s)
            .ok_or_else(|| format!("--site takes resid, attn or mlp, not `{s}`"))
    }

    pub fn block_site(self) -> BlockSite {
        match self {
            Site::Resid => BlockSite::ResidPre,
            Site::Attn => BlockSite::AttnOut,
            Site::Mlp => BlockSite::MlpOut,
        }
    }

    pub fn hook(self, layer: usize) -> HookPoint {
        HookPoint::block(layer, self.block_site())
    }
}

/// What `hubel patch` asks for.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PatchRequest {
    pub clean: String,
    pub corrupt: String,
    pub target: String,
    pub versus: Option<String>,
    pub site: Site,
    /// When the prompts' token counts differ: pad the shorter or trim the longer ([`fit_ids`]);
    /// `None`: different lengths are an error.
    pub fit: Option<Fit>,
}

/// How two prompts of different token lengths are made the same length. Both change only the
/// start of a prompt, right after its first token (position 0, or position 1 after a BOS):
/// the first position, the attention sink, stays first, and the prompts stay aligned at their
/// ends, so the last position, where the metric is read, is each prompt's own last token and
/// the tokens before it (" is in the city of") line up position by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Insert filler tokens (the model's neutral token, `" the"` where it is one token: what
    /// occlusion replaces tokens with) into the shorter prompt. No content is lost; the filler
    /// adds a little content of its own.
    Pad,
    /// Drop the longer prompt's extra tokens. No filler is added; the dropped tokens' content
    /// (usually the start of the sentence) is lost.
    Trim,
}

impl Fit {
    pub const ALL: [Fit; 2] = [Fit::Pad, Fit::Trim];

    pub fn name(self) -> &'static str {
        match self {
            Fit::Pad => "pad",
            Fit::Trim => "trim",
        }
    }

    pub fn parse(s: &str) -> std::result::Result<Fit, String> {
        Fit::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("--fit takes pad or trim, not `{s}`"))
    }
}

/// Which prompt a fit changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Clean,
    Corrupt,
}

impl Side {
    pub fn title(self) -> &'static str {
        match self {
            Side::Clean => "clean",
            Side::Corrupt => "corrupted",
        }
    }
}

/// Two prompts' ids of the same length, and what was done to get there.
#[derive(Clone, Debug, PartialEq)]
pub struct FitIds {
    pub clean: Vec<u32>,
    pub corrupt: Vec<u32>,
    /// The prompt that changed (`None`: the lengths were already equal).
    pub changed: Option<Side>,
    /// Tokens inserted (pad) or removed (trim), at `at`.
    pub count: usize,
}

/// `clean` and `corrupt` made the same length by `fit` at index `at` (1: right after position
/// 0): [`Fit::Pad`] inserts `count` copies of `filler` into the shorter one before index `at`,
/// [`Fit::Trim`] removes the `count` tokens from index `at` of the longer one. The last token
/// of each stays its last token, and the first `at` tokens stay. Equal lengths are returned
/// unchanged. Refused (with a message) when a prompt is empty or the shorter one has no token
/// after the first `at` (the change would reach its last token).
pub fn fit_ids(
    clean: &[u32],
    corrupt: &[u32],
    fit: Fit,
    filler: u32,
    at: usize,
) -> std::result::Result<FitIds, String> {
    if clean.is_empty() || corrupt.is_empty() {
        return Err("a prompt is empty: there is nothing to pad or trim".into());
    }
    let at = at.max(1);
    let (short, long) = (
        clean.len().min(corrupt.len()),
        clean.len().max(corrupt.len()),
    );
    let count = long - short;
    if count == 0 {
        return Ok(FitIds {
            clean: clean.to_vec(),
            corrupt: corrupt.to_vec(),
            changed: None,
            count: 0,
        });
    }
    if short <= at {
        return Err(format!(
            "the shorter prompt is {short} token{}: padding or trimming after its first {at} \
             would change its last token; give both prompts a few more tokens",
            if short == 1 { "" } else { "s" }
        ));
    }
    let clean_short = clean.len() < corrupt.len();
    let changed = match (fit, clean_short) {
        (Fit::Pad, true) | (Fit::Trim, false) => Side::Clean,
        _ => Side::Corrupt,
    };
    let edit = |ids: &[u32]| -> Vec<u32> {
        let mut out = ids[..at].to_vec();
        match fit {
            Fit::Pad => {
                out.extend(std::iter::repeat_n(filler, count));
                out.extend_from_slice(&ids[at..]);
            }
            Fit::Trim => out.extend_from_slice(&ids[at + count..]),
        }
        out
    };
    let (clean, corrupt) = match changed {
        Side::Clean => (edit(clean), corrupt.to_vec()),
        Side::Corrupt => (clean.to_vec(), edit(corrupt)),
    };
    Ok(FitIds {
        clean,
        corrupt,
        changed: Some(changed),
        count,
    })
}

/// What a fit did, for a person: "the corrupted prompt padded with 2 × \" the\" after
/// position 0".
pub fn describe_fit(fit: Fit, f: &FitIds, filler: &str, at: usize) -> Option<String> {
    let side = f.changed?;
    let after = format!("after position {}", at.max(1) - 1);
    Some(match fit {
        Fit::Pad => format!(
            "the {} prompt padded with {} × {filler:?} {after}",
            side.title(),
            f.count
        ),
        Fit::Trim => format!(
            "the {} prompt trimmed: its {} token{} {after} dropped",
            side.title(),
            f.count,
            if f.count == 1 { "" } else { "s" }
        ),
    })
}

/// `hubel patch --json`.
#[derive(Clone, Debug, Serialize)]
pub struct PatchReport {
    pub model: String,
    /// `logit(" Paris") − logit(" Rome") at the last position`.
    pub metric: String,
    /// The metric on the clean prompt.
    pub clean: f32,
    /// The metric on the corrupted prompt.
    pub corrupt: f32,
    /// `grid[L][p]`: the fraction of `clean − corrupt` restored by patching layer L, position p
    /// (0 everywhere when `|clean − corrupt| ≤ 1e-6`: 0/0 is 0).
    pub grid: Vec<Vec<f32>>,
    /// `patched[L][p]`: the metric of that patched run.
    pub patched: Vec<Vec<f32>>,
    pub site: Site,
    /// `blocks.L.hook_resid_pre`, with L for the layer.
    pub hook: String,
    pub target: TokenRef,
    pub versus: Option<TokenRef>,
    /// The clean prompt's tokens (the grid's columns).
    pub tokens: Vec<String>,
    pub corrupt_tokens: Vec<String>,
    pub clean_text: String,
    pub corrupt_text: String,
    /// How the prompts were made the same length, when they were not ("the corrupted prompt
    /// padded with 2 × \" the\" after position 0").
    pub fitted: Option<String>,
    /// A text that tokenizes to exactly the corrupted tokens run (a patch by hand makes it the
    /// probe): the corrupted text itself, or the fitted tokens' text when it tokenizes back to
    /// them; `None` when no text does (a filler after a BOS merges with the first word).
    pub corrupt_probe: Option<String>,
    /// Forwards run (layers × positions).
    pub runs: usize,
    pub seconds: f64,
}

impl PatchReport {
    /// The cell with the largest restored fraction: `(layer, position, fraction)`.
    pub fn strongest(&self) -> Option<(usize, usize, f32)> {
        let mut best: Option<(usize, usize, f32)> = None;
        for (l, row) in self.grid.iter().enumerate() {
            for (p, &v) in row.iter().enumerate() {
                if best.is_none_or(|b| v > b.2) {
                    best = Some((l, p, v));
                }
            }
        }
        best
    }
}

/// The patch of one cell: `site` at `layer`, position `pos` set to the value `source` (a run
/// recording that point, e.g. the clean prompt's) had there.
pub fn cell_intervention(
    source: &ActivationRecord,
    site: Site,
    layer: usize,
    pos: usize,
) -> Result<Intervention> {
    let hook = site.hook(layer);
    let act = source
        .get(hook)
        .ok_or_else(|| ModelError::Format(format!("{hook} was not recorded")))?;
    if pos >= act.shape[0] {
        return Err(CircuitError::PositionOutOfRange {
            pos,
            len: act.shape[0],
        });
    }
    Ok(Intervention {
        hook,
        positions: Some(vec![pos]),
        indices: None,
        op: Op::MeanOf {
            values: act.row(pos).to_vec(),
        },
    })
}

/// The metric on a row of logits.
fn metric(logits: &[f32], target: u32, versus: Option<u32>) -> f32 {
    logits[target as usize] - versus.map_or(0.0, |v| logits[v as usize])
}

/// The restored fraction (0 when there is nothing to restore).
pub fn fraction(patched: f32, clean: f32, corrupt: f32) -> f32 {
    let span = clean - corrupt;
    if span.abs() <= FLAT {
        0.0
    } else {
        (patched - corrupt) / span
    }
}

/// The clean and corrupted prompts as token ids of the same length, with their texts.
pub struct Prompts {
    pub clean: Vec<u32>,
    pub corrupt: Vec<u32>,
    pub clean_tokens: Vec<String>,
    pub corrupt_tokens: Vec<String>,
    /// What a fit did ([`describe_fit`]); `None` when nothing was changed.
    pub fitted: Option<String>,
    /// See [`PatchReport::corrupt_probe`].
    pub corrupt_probe: Option<String>,
}

/// Where a fit pads or trims: right after the first token of the text (after position 0, or
/// after position 1 when the tokenizer puts a BOS first), so the sink and the first word stay.
pub fn fit_at(model: &Model) -> usize {
    crate::experiments::special_prefix(model).len() + 1
}

/// Tokenizes both prompts; different lengths are an error that shows both tokenizations, or
/// with `fit`, are made equal by [`fit_ids`] (filler: [`Model::neutral_token`]).
pub fn prompts(model: &Model, clean: &str, corrupt: &str, fit: Option<Fit>) -> Result<Prompts> {
    let (c_ids, c_texts) = tokenize(model, clean)?;
    let (x_ids, x_texts) = tokenize(model, corrupt)?;
    if let (Some(fit), true) = (fit, c_ids.len() != x_ids.len()) {
        let (filler, at) = (model.neutral_token(), fit_at(model));
        let f = fit_ids(&c_ids, &x_ids, fit, filler, at).map_err(CircuitError::CannotFit)?;
        let texts = |ids: &[u32]| ids.iter().map(|&id| super::token_text(model, id)).collect();
        let fitted = describe_fit(fit, &f, &super::token_text(model, filler), at);
        let corrupt_probe = if f.changed == Some(Side::Corrupt) {
            text_of(model, &f.corrupt)
        } else {
            Some(corrupt.to_string())
        };
        return Ok(Prompts {
            clean_tokens: texts(&f.clean),
            corrupt_tokens: texts(&f.corrupt),
            clean: f.clean,
            corrupt: f.corrupt,
            fitted,
            corrupt_probe,
        });
    }
    if c_ids.len() != x_ids.len() {
        let show = |t: &[String]| {
            t.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        return Err(CircuitError::LengthMismatch {
            clean: c_ids.len(),
            corrupt: x_ids.len(),
            clean_tokens: show(&c_texts),
            corrupt_tokens: show(&x_texts),
        });
    }
    Ok(Prompts {
        clean: c_ids,
        corrupt: x_ids,
        clean_tokens: c_texts,
        corrupt_tokens: x_texts,
        fitted: None,
        corrupt_probe: Some(corrupt.to_string()),
    })
}

/// The text that tokenizes to exactly `ids` (the tokenizer's prefix left out of the decode),
/// or `None` when the decoded text tokenizes otherwise.
pub fn text_of(model: &Model, ids: &[u32]) -> Option<String> {
    let prefix = crate::experiments::special_prefix(model);
    let body = ids.strip_prefix(prefix.as_slice())?;
    let text = model.tokenizer().decode(body).ok()?;
    let back = model.tokenizer().encode_ids(&text).ok()?;
    (back == ids).then_some(text)
}

/// The trace. With a job's `ctx`: progress in runs, and its checkpoint (cancel, pause, the
/// viewer's clicks first) between batches.
pub fn run(model: &Model, req: &PatchRequest, ctx: Option<&JobCtx>) -> Result<PatchReport> {
    Ok(trace(model, req, ctx)?.0)
}

/// [`run`], also handing back the clean run's record of the patched site (every layer), from
/// which [`cell_intervention`] makes any cell's patch by hand.
pub fn trace(
    model: &Model,
    req: &PatchRequest,
    ctx: Option<&JobCtx>,
) -> Result<(PatchReport, ActivationRecord)> {
    let started = std::time::Instant::now();
    let target = single_token(model, &req.target, "target")?;
    let versus = req
        .versus
        .as_deref()
        .map(|v| single_token(model, v, "versus token"))
        .transpose()?;
    if versus.as_ref().is_some_and(|v| v.id == target.id) {
        return Err(CircuitError::SameTokens(target.token));
    }
    let p = prompts(model, &req.clean, &req.corrupt, req.fit)?;
    let (t, v) = (target.id, versus.as_ref().map(|v| v.id));
    let (n_layers, len) = (model.config().n_layers, p.clean.len());
    let cancel = ctx.map(|c| c.cancel_flag().clone());
    if let Some(ctx) = ctx {
        ctx.set_phase("clean and corrupted runs");
        ctx.set_total((n_layers * len) as u64, "runs");
        ctx.set_done(0);
    }
    let capture = Capture::sites([req.site.block_site()]);
    let clean_out = model
        .run_batch(&[&p.clean], &capture, &[], Logits::Last, cancel.clone())?
        .pop()
        .expect("one run");
    // The corrupted run, keeping its block inputs: a copy patched at layer L starts at block L.
    let cache = model.prepare(&p.corrupt, &Capture::Nothing, cancel.clone())?;
    let m_clean = metric(clean_out.last_logits(), t, v);
    let m_corrupt = metric(cache.baseline.last_logits(), t, v);
    if let Some(ctx) = ctx {
        ctx.set_phase(&format!("patching the {}", req.site.title()));
    }
    let cells: Vec<(usize, usize)> = (0..n_layers)
        .flat_map(|l| (0..len).map(move |pos| (l, pos)))
        .collect();
    let mut patched = vec![vec![0f32; len]; n_layers];
    let per_batch = (BATCH_TOKENS / len).max(1);
    for chunk in cells.chunks(per_batch) {
        if let Some(ctx) = ctx {
            ctx.checkpoint()?;
        }
        let ivs: Vec<Vec<Intervention>> = chunk
            .iter()
            .map(|&(l, pos)| {
                cell_intervention(&clean_out.record, req.site, l, pos).map(|iv| vec![iv])
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&[Intervention]> = ivs.iter().map(Vec::as_slice).collect();
        let outs = model.rerun_batch_each(
            &cache,
            &Capture::Nothing,
            &refs,
            Logits::Last,
            cancel.clone(),
        )?;
        for (&(l, pos), out) in chunk.iter().zip(&outs) {
            patched[l][pos] = metric(out.last_logits(), t, v);
        }
        if let Some(ctx) = ctx {
            ctx.advance(chunk.len() as u64);
        }
    }
    let grid = patched
        .iter()
        .map(|row| {
            row.iter()
                .map(|&m| fraction(m, m_clean, m_corrupt))
                .collect()
        })
        .collect();
    let report = PatchReport {
        model: model.info().describe_at(model.precision()),
        metric: format!(
            "{} at the last position",
            super::dla::metric_name(&target, versus.as_ref())
        ),
        clean: m_clean,
        corrupt: m_corrupt,
        grid,
        patched,
        site: req.site,
        hook: format!("blocks.L.{}", req.site.block_site().suffix()),
        target,
        versus,
        tokens: p.clean_tokens,
        corrupt_tokens: p.corrupt_tokens,
        clean_text: req.clean.clone(),
        corrupt_text: req.corrupt.clone(),
        fitted: p.fitted,
        corrupt_probe: p.corrupt_probe,
        runs: cells.len(),
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((report, clean_out.record))
}

/// The report as text: the metrics, then the grid (layers down, positions across).
pub fn render(r: &PatchReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "model   {}", r.model);
    let _ = writeln!(s, "clean   {:?}: {:.4}", r.clean_text, r.clean);
    let _ = writeln!(s, "corrupt {:?}: {:.4}", r.corrupt_text, r.corrupt);
    if let Some(f) = &r.fitted {
        let _ = writeln!(s, "fitted  {f}");
        let _ = writeln!(s, "        clean   {:?}", r.tokens);
        let _ = writeln!(s, "        corrupt {:?}", r.corrupt_tokens);
    }
    let _ = writeln!(
        s,
        "metric  {}; cells: fraction restored by patching {} at layer × position ({} runs, {:.1} s)",
        r.metric,
        r.hook,
        r.runs,
        r.seconds
    );
    let label = |t: &str| {
        let t = format!("{t:?}");
        if t.chars().count() > 8 {
            format!("{}…", t.chars().take(7).collect::<String>())
        } else {
            t
        }
    };
    let _ = write!(s, "{:>5}", "");
    for t in &r.tokens {
        let _ = write!(s, " {:>8}", label(t));
    }
    let _ = writeln!(s);
    for (l, row) in r.grid.iter().enumerate() {
        let _ = write!(s, "{:>5}", format!("L{l}"));
        for v in row {
            let _ = write!(s, " {v:>8.3}");
        }
        let _ = writeln!(s);
    }
    if let Some((l, p, v)) = r.strongest() {
        let _ = writeln!(
            s,
            "strongest: layer {l}, position {p} ({:?}): {v:.3}",
            r.tokens[p]
        );
    }
    s
}
