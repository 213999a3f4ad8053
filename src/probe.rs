//! `hubel probe`: run a probe, optionally with interventions, and report what changed.
//! The report's JSON shape is a public interface (see the README).

use serde::Serialize;

use crate::analysis;
use crate::hooks::{Capture, Intervention};
use crate::model::{Generate, Model, ModelInfo, Precision, Result, RunOutput, Token};

/// What the user asked for.
#[derive(Clone, Debug, Default)]
pub struct ProbeRequest {
    pub text: String,
    pub interventions: Vec<Intervention>,
    pub top: usize,
    /// Tokens of continuation; 0 for none.
    pub generate: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopToken {
    pub id: u32,
    pub token: String,
    pub logit: f32,
    pub prob: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub top_next: Vec<TopToken>,
    /// Mean of `token_nll`; null for a one-token probe.
    pub mean_nll: Option<f32>,
    /// `-log p(token[i+1] | tokens[..=i])` for each position but the last.
    pub token_nll: Vec<f32>,
    pub continuation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_from_baseline: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub model: ModelInfo,
    /// Exact (f32, the reference) or the opt-in fast path.
    pub precision: Precision,
    pub tokens: Vec<Token>,
    pub interventions: Vec<String>,
    pub baseline: RunSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intervened: Option<RunSummary>,
    /// The last position's logits of the intervened run when there is one, else the baseline's.
    #[serde(skip)]
    pub last_logits: Vec<f32>,
}

/// The `k` most likely next tokens after one position's logits.
pub fn top_tokens(model: &Model, logits: &[f32], k: usize) -> Vec<TopToken> {
    analysis::top_k(logits, k)
        .into_iter()
        .map(|(id, logit, prob)| TopToken {
            id,
            token: model.tokenizer().token_text(id),
            logit,
            prob,
        })
        .collect()
}

/// The summary of one run that both this report and the viewer show: the next-token top `top`
/// after the last position, and the loss of every token.
pub fn summarize(
    model: &Model,
    out: &RunOutput,
    ids: &[u32],
    top: usize,
    continuation: Option<String>,
) -> RunSummary {
    let token_nll = analysis::token_nll(&out.logits, out.vocab, ids);
    summary_of(model, out.last_logits(), token_nll, top, continuation)
}

/// [`summarize`] from the last position's logits and the loss of every token.
fn summary_of(
    model: &Model,
    last_logits: &[f32],
    token_nll: Vec<f32>,
    top: usize,
    continuation: Option<String>,
) -> RunSummary {
    RunSummary {
        top_next: top_tokens(model, last_logits, top),
        mean_nll: analysis::mean(&token_nll),
        token_nll,
        continuation,
        kl_from_baseline: None,
    }
}

/// Runs the probe (and the intervened probe, when there are interventions). Each run keeps only
/// its last position's logits and the loss of each token ([`Model::run_last`],
/// [`Model::token_nll`]): a long probe's memory stays that of its forward pass.
pub fn run(model: &Model, req: &ProbeRequest) -> Result<ProbeReport> {
    let tokens = model.tokenize(&req.text)?;
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    model.check_interventions(&req.interventions, ids.len())?;
    let opts = Generate {
        max_tokens: req.generate,
        ..Generate::default()
    };
    let continue_with = |ivs: &[Intervention]| -> Result<Option<String>> {
        if req.generate == 0 {
            return Ok(None);
        }
        let new = model.generate(&ids, ivs, &opts, None)?;
        Ok(Some(model.tokenizer().decode(&new)?))
    };
    let summarized = |ivs: &[Intervention]| -> Result<(RunSummary, Vec<f32>)> {
        let (out, finals) = model.run_last(&ids, &Capture::Nothing, ivs, None)?;
        let token_nll = model.token_nll(&finals, &ids)?;
        let summary = summary_of(
            model,
            out.last_logits(),
            token_nll,
            req.top,
            continue_with(ivs)?,
        );
        Ok((summary, out.logits))
    };
    let (baseline, baseline_last) = summarized(&[])?;
    let (intervened, last_logits) = if req.interventions.is_empty() {
        (None, baseline_last)
    } else {
        let (mut s, last) = summarized(&req.interventions)?;
        s.kl_from_baseline = Some(analysis::kl_divergence(&baseline_last, &last));
        (Some(s), last)
    };
    Ok(ProbeReport {
        model: model.info().clone(),
        precision: model.precision(),
        tokens,
        interventions: req.interventions.iter().map(describe).collect(),
        baseline,
        intervened,
        last_logits,
    })
}

/// A one-line description of an intervention, e.g. `blocks.10.mlp.hook_post[123] zero`.
pub fn describe(iv: &Intervention) -> String {
    use crate::hooks::Op;
    let list = |v: &[usize]| {
        v.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut s = iv.hook.to_string();
    if let Some(ix) = &iv.indices {
        s.push_str(&format!("[{}]", list(ix)));
    }
    if let Some(pos) = &iv.positions {
        s.push_str(&format!("@{}", list(pos)));
    }
    let op = match &iv.op {
        Op::Zero => " zero".to_string(),
        Op::Mean => " mean".to_string(),
        Op::MeanOf { .. } => " mean (given)".to_string(),
        Op::Set { value } => format!(" = {value}"),
        Op::Add { value } => format!(" += {value}"),
        Op::AddDirection { alpha, .. } => format!(" += {alpha}·direction"),
        Op::AddScaled { label, .. } => format!(" {label}"),
        Op::Scale { factor } => format!(" *= {factor}"),
    };
    s + &op
}

/// The report as a readable table.
pub fn render_table(r: &ProbeReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let m = &r.model;
    let _ = writeln!(s, "model  {} ({})", m.describe(), m.shape());
    if r.precision != Precision::Exact {
        let _ = writeln!(s, "path   {}", r.precision.name());
    }
    let toks: Vec<String> = r
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{i}:{:?}", t.text))
        .collect();
    let _ = writeln!(s, "tokens ({}) {}", r.tokens.len(), toks.join(" "));
    for iv in &r.interventions {
        let _ = writeln!(s, "edit   {iv}");
    }
    let nll = |v: Option<f32>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    let _ = writeln!(s);
    match &r.intervened {
        None => {
            let _ = writeln!(
                s,
                "{:>4}  {:<20} {:>9} {:>8}",
                "rank", "next token", "logit", "prob"
            );
            for (i, t) in r.baseline.top_next.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{:>4}  {:<20} {:>9.3} {:>8.4}",
                    i + 1,
                    format!("{:?}", t.token),
                    t.logit,
                    t.prob
                );
            }
            let _ = writeln!(s, "\nmean NLL {}", nll(r.baseline.mean_nll));
        }
        Some(iv) => {
            let _ = writeln!(
                s,
                "{:>4}  {:<20} {:>8}   {:<20} {:>8}",
                "rank", "baseline", "prob", "intervened", "prob"
            );
            for i in 0..r.baseline.top_next.len().max(iv.top_next.len()) {
                let cell = |v: &Vec<TopToken>| {
                    v.get(i).map_or((String::new(), String::new()), |t| {
                        (format!("{:?}", t.token), format!("{:.4}", t.prob))
                    })
                };
                let (a, pa) = cell(&r.baseline.top_next);
                let (b, pb) = cell(&iv.top_next);
                let _ = writeln!(s, "{:>4}  {:<20} {:>8}   {:<20} {:>8}", i + 1, a, pa, b, pb);
            }
            let _ = writeln!(
                s,
                "\nmean NLL {} → {}",
                nll(r.baseline.mean_nll),
                nll(iv.mean_nll)
            );
            let _ = writeln!(
                s,
                "KL(baseline ‖ intervened) at the last position {:.6} nats",
                iv.kl_from_baseline.unwrap_or(0.0)
            );
        }
    }
    if let Some(c) = &r.baseline.continuation {
        let _ = writeln!(s, "continuation (baseline)   {c:?}");
    }
    if let Some(c) = r.intervened.as_ref().and_then(|i| i.continuation.as_ref()) {
        let _ = writeln!(s, "continuation (intervened) {c:?}");
    }
    s
}
