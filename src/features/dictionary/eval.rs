//! A dictionary judged on held-out text (every 20th stimulus of the corpus, never trained on:
//! [`super::collect::is_heldout`]; dictionaries saved before that split, from the end of the
//! corpus), in the original space:
//! - FVU = Σ‖x − x̂‖² / Σ‖x − mean‖² over held-out tokens at positions ≥ 1 (the mean is the
//!   held-out tokens' own);
//! - L0 = mean active atoms per token; dead_frac = atoms active on no held-out token;
//! - ce_recovered = (NLL_mean-ablated − NLL_spliced) / (NLL_mean-ablated − NLL_clean): x̂ spliced
//!   into the forward pass at the dictionary's hook at every position ≥ 1, against the hook
//!   replaced by the training mean there (for an imported SAE, which has none, by the mean of
//!   the batch's held-out rows). NLL is the mean loss of the tokens predicted from
//!   positions ≥ 1 (the predictions from position 0 are the same in all three runs).

use crate::hooks::{Capture, Intervention, Op};
use crate::jobs::JobCtx;
use crate::model::{Logits, Model};
use crate::scan::Corpus;

use super::linalg::Code;
use super::{DictError, Dictionary, Split};

/// `hubel dict eval --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalReport {
    pub fvu: f64,
    pub l0: f64,
    pub dead_frac: f64,
    pub ce_recovered: f64,
    pub tokens: usize,
    pub nll_clean: f64,
    pub nll_spliced: f64,
    pub nll_mean_ablated: f64,
    pub hook: String,
    /// Every hook's own figures, for a dictionary shared by several (the top level is then the
    /// mean of theirs, and dead_frac the atoms active at no hook).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_hook: Vec<EvalReport>,
}

/// Held-out windows of a dictionary trained with `split` on `trained` stimuli, until `tokens`
/// positions ≥ 1: for [`Split::Spread`] the held-out stimuli ([`super::collect::is_heldout`],
/// never trained on) in their spread order, drawn from the whole corpus; for [`Split::Head`]
/// (dictionaries trained on the corpus's first stimuli) stimuli read from its end, never one of
/// the `trained` first ones.
pub fn heldout_windows(
    model: &Model,
    corpus: &Corpus,
    tokens: usize,
    split: Split,
    trained: usize,
) -> Result<Vec<Vec<u32>>, DictError> {
    let len = super::collect::WINDOW.min(model.config().n_ctx).max(2);
    let n = corpus.stimuli.len();
    let order: Vec<usize> = match split {
        Split::Spread => super::collect::spread_order(n, true),
        Split::Head => (trained.min(n)..n).rev().collect(),
    };
    let mut out = Vec::new();
    let mut planned = 0;
    for i in order {
        if planned >= tokens {
            break;
        }
        let ids = model
            .tokenizer()
            .encode_ids(&corpus.stimuli[i].text)
            .map_err(|e| DictError::Invalid(e.to_string()))?;
        for chunk in ids.chunks(len) {
            if chunk.len() >= 3 && planned < tokens {
                planned += chunk.len() - 1;
                out.push(chunk.to_vec());
            }
        }
    }
    if out.is_empty() {
        return Err(DictError::Invalid(match split {
            Split::Spread => format!(
                "the corpus {} has no held-out text: every {}th stimulus is held out, and it has \
                 {n} (a held-out stimulus needs at least 3 tokens)",
                corpus.name,
                super::collect::HELDOUT_EVERY
            ),
            Split::Head => format!(
                "the corpus {} has no held-out text beyond the {trained} stimuli the dictionary \
                 was trained on",
                corpus.name
            ),
        }));
    }
    Ok(out)
}

#[derive(Default)]
struct Sums {
    err: f64,
    sq: f64,
    sum: Vec<f64>,
    rows: usize,
    active: usize,
    nll: [f64; 3],
    predicted: usize,
}

/// Evaluates `dict` on `windows` (their positions ≥ 1), at each of its hooks.
pub fn evaluate(
    model: &Model,
    dict: &Dictionary,
    windows: &[Vec<u32>],
    ctx: Option<&JobCtx>,
) -> Result<EvalReport, DictError> {
    let d = dict.d();
    if model.info().d_model != d {
        return Err(DictError::Invalid(format!(
            "the dictionary reads {d} dimensions, the model's residual stream has {}",
            model.info().d_model
        )));
    }
    let total: usize = windows.iter().map(|w| w.len()).sum();
    if let Some(ctx) = ctx {
        ctx.set_phase("evaluating on held-out text");
        ctx.set_total((total * dict.config.hooks.len() * 2) as u64, "tokens");
        ctx.set_done(0);
    }
    let mut reports = Vec::new();
    let mut used_any = vec![false; dict.atoms()];
    for (h, &hook) in dict.config.hooks.iter().enumerate() {
        model
            .hook_units(hook)
            .map_err(|e| DictError::Invalid(e.to_string()))?;
        let mut s = Sums {
            sum: vec![0.0; d],
            ..Sums::default()
        };
        let mut used = vec![false; dict.atoms()];
        let capture = Capture::points([hook]);
        let mut i = 0;
        while i < windows.len() {
            if let Some(ctx) = ctx {
                ctx.checkpoint()?;
            }
            let mut j = i + 1;
            let mut n = windows[i].len();
            while j < windows.len() && n + windows[j].len() <= super::collect::BATCH_TOKENS {
                n += windows[j].len();
                j += 1;
            }
            let batch: Vec<&[u32]> = windows[i..j].iter().map(Vec::as_slice).collect();
            let cancel = ctx.map(|c| c.cancel_flag().clone());
            let clean = model
                .run_batch(&batch, &capture, &[], Logits::All, cancel.clone())
                .map_err(cancelled)?;
            // The training mean; a dictionary without one (imported: its normaliser is the
            // identity) is ablated to this batch's mean of held-out rows instead of to zero.
            let mean = if dict.norms[h].shift.iter().all(|&v| v == 0.0) {
                batch_mean(&batch, &clean, hook, d)?
            } else {
                dict.norms[h].shift.clone()
            };
            let mut spliced: Vec<Vec<Intervention>> = Vec::new();
            let mut ablated: Vec<Vec<Intervention>> = Vec::new();
            // The batch's rows (positions ≥ 1) coded at once: a solver's Gram matrix is made
            // once per batch, not once per window.
            let mut rows = Vec::with_capacity(n * d);
            for (w, out) in batch.iter().zip(&clean) {
                let act = out.record.get(hook).ok_or_else(|| {
                    DictError::Invalid(format!("{hook} was not recorded (an internal error)"))
                })?;
                rows.extend_from_slice(&act.data[d..w.len() * d]);
            }
            let mut all_codes = dict.encode(h, &rows).into_iter();
            let mut at = 0;
            for w in &batch {
                let x = &rows[at * d..(at + w.len() - 1) * d];
                at += w.len() - 1;
                let codes: Vec<Code> = all_codes.by_ref().take(w.len() - 1).collect();
                let mut ivs = Vec::with_capacity(w.len() - 1);
                for (p, code) in codes.iter().enumerate() {
                    let xhat = dict.decode(h, code);
                    let xp = &x[p * d..(p + 1) * d];
                    for ((&v, &vh), sum) in xp.iter().zip(&xhat).zip(&mut s.sum) {
                        s.err += f64::from(v - vh).powi(2);
                        s.sq += f64::from(v).powi(2);
                        *sum += f64::from(v);
                    }
                    s.rows += 1;
                    s.active += code.len();
                    for &(a, _) in code {
                        used[a as usize] = true;
                    }
                    ivs.push(Intervention {
                        hook,
                        positions: Some(vec![p + 1]),
                        indices: None,
                        op: Op::MeanOf { values: xhat },
                    });
                }
                spliced.push(ivs);
                ablated.push(vec![Intervention {
                    hook,
                    positions: Some((1..w.len()).collect()),
                    indices: None,
                    op: Op::MeanOf {
                        values: mean.clone(),
                    },
                }]);
            }
            let sp: Vec<&[Intervention]> = spliced.iter().map(Vec::as_slice).collect();
            let ab: Vec<&[Intervention]> = ablated.iter().map(Vec::as_slice).collect();
            let spliced = model
                .run_batch_each(&batch, &Capture::Nothing, &sp, Logits::All, cancel.clone())
                .map_err(cancelled)?;
            let ablated = model
                .run_batch_each(&batch, &Capture::Nothing, &ab, Logits::All, cancel)
                .map_err(cancelled)?;
            for (k, w) in batch.iter().enumerate() {
                for (run, slot) in [(&clean[k], 0), (&spliced[k], 1), (&ablated[k], 2)] {
                    let nll = crate::analysis::token_nll(&run.logits, run.vocab, w);
                    // Entry p predicts token p + 1 from position p; position 0's is unchanged.
                    s.nll[slot] += nll[1..].iter().map(|&v| f64::from(v)).sum::<f64>();
                }
                s.predicted += w.len() - 2;
            }
            if let Some(ctx) = ctx {
                ctx.advance(2 * n as u64);
            }
            i = j;
        }
        for (a, &u) in used_any.iter_mut().zip(&used) {
            *a |= u;
        }
        let rows = s.rows.max(1) as f64;
        let mean_sq: f64 = s.sum.iter().map(|v| v * v).sum::<f64>() / rows;
        let tot = (s.sq - mean_sq).max(1e-30);
        let p = s.predicted.max(1) as f64;
        let (clean, spliced, ablated) = (s.nll[0] / p, s.nll[1] / p, s.nll[2] / p);
        reports.push(EvalReport {
            fvu: s.err / tot,
            l0: s.active as f64 / rows,
            dead_frac: used.iter().filter(|&&u| !u).count() as f64 / used.len().max(1) as f64,
            ce_recovered: ce_recovered(clean, spliced, ablated),
            tokens: s.rows,
            nll_clean: clean,
            nll_spliced: spliced,
            nll_mean_ablated: ablated,
            hook: hook.to_string(),
            per_hook: Vec::new(),
        });
    }
    if reports.len() == 1 {
        return Ok(reports.remove(0));
    }
    let k = reports.len() as f64;
    let mean = |f: fn(&EvalReport) -> f64| reports.iter().map(f).sum::<f64>() / k;
    Ok(EvalReport {
        fvu: mean(|r| r.fvu),
        l0: mean(|r| r.l0),
        dead_frac: used_any.iter().filter(|&&u| !u).count() as f64 / used_any.len().max(1) as f64,
        ce_recovered: mean(|r| r.ce_recovered),
        tokens: reports[0].tokens,
        nll_clean: mean(|r| r.nll_clean),
        nll_spliced: mean(|r| r.nll_spliced),
        nll_mean_ablated: mean(|r| r.nll_mean_ablated),
        hook: dict.hooks_text(),
        per_hook: reports,
    })
}

/// The mean of `hook`'s rows at positions ≥ 1 over a batch's clean runs.
fn batch_mean(
    batch: &[&[u32]],
    runs: &[crate::model::RunOutput],
    hook: crate::hooks::HookPoint,
    d: usize,
) -> Result<Vec<f32>, DictError> {
    let mut sum = vec![0f64; d];
    let mut n = 0usize;
    for (w, run) in batch.iter().zip(runs) {
        let act = run.record.get(hook).ok_or_else(|| {
            DictError::Invalid(format!("{hook} was not recorded (an internal error)"))
        })?;
        for r in act.data[d..w.len() * d].chunks_exact(d) {
            for (s, &v) in sum.iter_mut().zip(r) {
                *s += f64::from(v);
            }
            n += 1;
        }
    }
    Ok(sum.iter().map(|s| (s / n.max(1) as f64) as f32).collect())
}

/// (ablated − spliced) / (ablated − clean); 0 when the mean ablation costs nothing.
pub fn ce_recovered(clean: f64, spliced: f64, ablated: f64) -> f64 {
    let gap = ablated - clean;
    if gap.abs() < 1e-12 {
        0.0
    } else {
        (ablated - spliced) / gap
    }
}

fn cancelled(e: crate::model::ModelError) -> DictError {
    match e {
        crate::model::ModelError::Cancelled => DictError::Cancelled,
        e => e.into(),
    }
}
