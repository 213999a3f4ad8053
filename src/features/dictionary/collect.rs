//! Residual streams collected from a corpus with the batched engine: the rows a dictionary is
//! trained and evaluated on. Position 0 of every window is left out: it is SmolLM2's attention
//! sink, whose residual norm is hundreds of times any other's.

use crate::hooks::{Capture, HookPoint};
use crate::jobs::JobCtx;
use crate::model::Model;
use crate::scan::Corpus;

use super::DictError;

/// Rows of residual streams: for each hook, `[rows, d]`; row `i` is window `rows[i].0` at
/// position `rows[i].1` (≥ 1).
#[derive(Clone, Debug)]
pub struct Activations {
    pub hooks: Vec<HookPoint>,
    pub d: usize,
    pub data: Vec<Vec<f32>>,
    pub rows: Vec<(u32, u32)>,
    /// Each window's tokens.
    pub windows: Vec<Vec<u32>>,
    /// Each window's stimulus index in the corpus.
    pub stimulus: Vec<u32>,
}

impl Activations {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn row(&self, hook: usize, i: usize) -> &[f32] {
        &self.data[hook][i * self.d..(i + 1) * self.d]
    }

    /// The number of distinct stimuli read.
    pub fn stimuli(&self) -> usize {
        let mut s = self.stimulus.clone();
        s.sort_unstable();
        s.dedup();
        s.len()
    }
}

/// Every `HELDOUT_EVERY`-th stimulus of a corpus (by index: `i % HELDOUT_EVERY ==
/// HELDOUT_EVERY − 1`) is held-out text, never trained on; the others are training text.
pub const HELDOUT_EVERY: usize = 20;

/// Whether stimulus `i` is held out ([`HELDOUT_EVERY`]).
pub fn is_heldout(i: usize) -> bool {
    i % HELDOUT_EVERY == HELDOUT_EVERY - 1
}

/// The order stimuli are read in, for training (`heldout` false) or held-out text: their
/// indices shuffled by a fixed hash (SplitMix64 of the index), so that a budget of tokens draws
/// from the whole corpus (WordNet's files go noun, verb, adjective, adverb: its first 20k tokens
/// are all nouns) and the order never changes between runs, machines or crate versions.
pub fn spread_order(stimuli: usize, heldout: bool) -> Vec<usize> {
    let mut order: Vec<(u64, usize)> = (0..stimuli)
        .filter(|&i| is_heldout(i) == heldout)
        .map(|i| (splitmix64(i as u64), i))
        .collect();
    order.sort_unstable();
    order.into_iter().map(|(_, i)| i).collect()
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Windows of at most this many tokens (the scan's window).
pub const WINDOW: usize = 128;
/// Tokens per batched forward.
pub const BATCH_TOKENS: usize = 2048;

/// Runs the training stimuli of `corpus` in [`spread_order`] (held-out ones are left for
/// [`super::eval::heldout_windows`]) through `model` until `tokens` rows
/// (positions ≥ 1) are collected at every hook in `hooks`; the forward stops after the last
/// block they need. Reports tokens as progress on `ctx` and stops at its checkpoint.
pub fn collect(
    model: &Model,
    corpus: &Corpus,
    hooks: &[HookPoint],
    tokens: usize,
    ctx: Option<&JobCtx>,
) -> Result<Activations, DictError> {
    if hooks.is_empty() {
        return Err(DictError::Invalid("no layers to collect".into()));
    }
    if tokens == 0 {
        return Err(DictError::Invalid("--tokens must be at least 1".into()));
    }
    if tokens.saturating_mul(hooks.len()) > super::MAX_ROWS {
        return Err(DictError::Invalid(format!(
            "{tokens} tokens at {} layers is more than {} rows, which would not fit in memory: \
             ask for fewer tokens or layers",
            hooks.len(),
            super::MAX_ROWS
        )));
    }
    let d = model.info().d_model;
    for &h in hooks {
        let units = model
            .hook_units(h)
            .map_err(|e| DictError::Invalid(e.to_string()))?;
        if units != d || h.layout() != crate::hooks::Layout::PosWidth {
            return Err(DictError::Invalid(format!(
                "{h} is not a residual stream (d_model = {d}): dictionaries are learnt on \
                 hook_embed, blocks.L.hook_resid_pre, hook_resid_mid or hook_resid_post"
            )));
        }
    }
    let last = hooks.iter().filter_map(|h| h.layer()).max().unwrap_or(0);
    let len = WINDOW.min(model.config().n_ctx).max(2);
    // Windows, in spread order, until the budget of rows is met.
    let mut windows: Vec<Vec<u32>> = Vec::new();
    let mut stimulus: Vec<u32> = Vec::new();
    let mut planned = 0usize;
    for i in spread_order(corpus.stimuli.len(), false) {
        if planned >= tokens {
            break;
        }
        let ids = model
            .tokenizer()
            .encode_ids(&corpus.stimuli[i].text)
            .map_err(|e| DictError::Invalid(e.to_string()))?;
        for chunk in ids.chunks(len) {
            if chunk.len() < 2 || planned >= tokens {
                continue;
            }
            planned += chunk.len() - 1;
            windows.push(chunk.to_vec());
            stimulus.push(i as u32);
        }
    }
    if planned == 0 {
        return Err(DictError::Invalid(format!(
            "the corpus {} gives no tokens past position 0",
            corpus.name
        )));
    }
    if let Some(ctx) = ctx {
        ctx.set_phase("collecting residual streams");
        ctx.set_total(planned.min(tokens) as u64, "tokens");
        ctx.set_done(0);
    }
    let capture = Capture::points(hooks.iter().copied());
    let mut data: Vec<Vec<f32>> = hooks
        .iter()
        .map(|_| Vec::with_capacity(planned.min(tokens) * d))
        .collect();
    let mut rows: Vec<(u32, u32)> = Vec::with_capacity(planned.min(tokens));
    let mut i = 0;
    while i < windows.len() && rows.len() < tokens {
        if let Some(ctx) = ctx {
            ctx.checkpoint().map_err(|_| DictError::Cancelled)?;
        }
        let mut j = i + 1;
        let mut n = windows[i].len();
        while j < windows.len() && n + windows[j].len() <= BATCH_TOKENS {
            n += windows[j].len();
            j += 1;
        }
        let batch: Vec<&[u32]> = windows[i..j].iter().map(Vec::as_slice).collect();
        let cancel = ctx.map(|c| c.cancel_flag().clone());
        let records = model
            .run_batch_through(&batch, &capture, last, cancel)
            .map_err(|e| match e {
                crate::model::ModelError::Cancelled => DictError::Cancelled,
                e => e.into(),
            })?;
        let before = rows.len();
        for (w, record) in (i..j).zip(&records) {
            let wlen = windows[w].len();
            let take = (wlen - 1).min(tokens - rows.len());
            for (h, &hook) in hooks.iter().enumerate() {
                let act = record.get(hook).ok_or_else(|| {
                    DictError::Invalid(format!("{hook} was not recorded (an internal error)"))
                })?;
                data[h].extend_from_slice(&act.data[d..(1 + take) * d]);
            }
            rows.extend((1..=take).map(|p| (w as u32, p as u32)));
            if rows.len() >= tokens {
                break;
            }
        }
        if let Some(ctx) = ctx {
            ctx.advance((rows.len() - before) as u64);
        }
        i = j;
    }
    let used = rows.last().map_or(0, |r| r.0 as usize + 1);
    windows.truncate(used);
    stimulus.truncate(used);
    Ok(Activations {
        hooks: hooks.to_vec(),
        d,
        data,
        rows,
        windows,
        stimulus,
    })
}
