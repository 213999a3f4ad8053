//! What atoms mean, and what a word is made of.
//!
//! [`describe`] reads every training row's code and gives each atom its top examples (a token in
//! its context), its most frequent tokens among its strongest activations, a label made of them,
//! its density, and Yun et al.'s importance per layer (the mean coefficient over that layer's
//! rows). [`decompose`] writes one word's residual (in a context, at a layer) as its atoms.

use std::collections::{BinaryHeap, HashMap};

use crate::corpus::protocol::{parse_marker, reading_position};
use crate::experiments::token_display;
use crate::hooks::{Capture, HookPoint};
use crate::model::Model;

use super::{Activations, AtomExample, AtomInfo, DictError, Dictionary};

/// Examples kept per atom.
pub const EXAMPLES: usize = 8;
/// Strongest activations whose tokens are counted for the top tokens.
const TOKEN_POOL: usize = 64;
/// Tokens of context shown before and after an example's token.
const BEFORE: usize = 10;
const AFTER: usize = 3;

#[derive(PartialEq)]
struct Hit(f32, u32);

impl Eq for Hit {}

impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Hit {
    /// Reversed: a max-heap of these pops the smallest value (the heap keeps the largest).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.total_cmp(&self.0).then(other.1.cmp(&self.1))
    }
}

/// A row of `acts` as an example.
pub fn example(model: &Model, acts: &Activations, row: usize, value: f32) -> AtomExample {
    let (w, p) = acts.rows[row];
    let tokens = &acts.windows[w as usize];
    let p = p as usize;
    let text = |ids: &[u32]| -> String { ids.iter().map(|&t| token_display(model, t)).collect() };
    AtomExample {
        before: text(&tokens[p.saturating_sub(BEFORE)..p]),
        token: token_display(model, tokens[p]),
        after: text(&tokens[p + 1..(p + 1 + AFTER).min(tokens.len())]),
        value,
    }
}

/// Labels, top tokens, examples, density and importance of every atom, from the codes of the
/// rows it was trained on (each hook's rows of `acts`).
pub fn describe(dict: &mut Dictionary, acts: &Activations, model: &Model) {
    let m = dict.atoms();
    let n = acts.len();
    let hooks = dict.config.hooks.len();
    let mut pools: Vec<BinaryHeap<Hit>> = (0..m).map(|_| BinaryHeap::new()).collect();
    let mut count = vec![0usize; m];
    let mut importance = vec![vec![0f64; hooks]; m];
    for (h, &hook) in dict.config.hooks.clone().iter().enumerate() {
        let Some(a) = acts.hooks.iter().position(|&x| x == hook) else {
            continue;
        };
        // Codes in slices, so a large collection is not doubled in memory.
        for start in (0..n).step_by(4096) {
            let end = (start + 4096).min(n);
            let x = &acts.data[a][start * acts.d..end * acts.d];
            for (i, code) in dict.encode(h, x).into_iter().enumerate() {
                let row = (start + i) as u32;
                for (j, v) in code {
                    let j = j as usize;
                    count[j] += 1;
                    importance[j][h] += f64::from(v);
                    let heap = &mut pools[j];
                    if heap.len() < TOKEN_POOL {
                        heap.push(Hit(v, row + (h * n) as u32));
                    } else if heap.peek().is_some_and(|s| v > s.0) {
                        heap.pop();
                        heap.push(Hit(v, row + (h * n) as u32));
                    }
                }
            }
        }
    }
    let rows = (n * hooks).max(1) as f32;
    let sources = std::mem::take(&mut dict.sources);
    dict.info = (0..m)
        .map(|j| {
            let mut hits: Vec<Hit> = std::mem::take(&mut pools[j]).into_vec();
            hits.sort_by(|a, b| b.0.total_cmp(&a.0));
            let row = |h: &Hit| (h.1 as usize) % n.max(1);
            let examples: Vec<AtomExample> = hits
                .iter()
                .take(EXAMPLES)
                .map(|h| example(model, acts, row(h), h.0))
                .collect();
            let mut tally: HashMap<String, (usize, f32)> = HashMap::new();
            for h in &hits {
                let (w, p) = acts.rows[row(h)];
                let t = token_display(model, acts.windows[w as usize][p as usize]);
                let key = t.trim().to_lowercase();
                if key.is_empty() {
                    continue;
                }
                let e = tally.entry(key).or_insert((0, 0.0));
                e.0 += 1;
                e.1 += h.0;
            }
            let mut tokens: Vec<(String, (usize, f32))> = tally.into_iter().collect();
            tokens.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(b.1 .1.total_cmp(&a.1 .1)));
            let top_tokens: Vec<String> = tokens.into_iter().take(5).map(|t| t.0).collect();
            let label = if top_tokens.is_empty() {
                String::new()
            } else {
                top_tokens
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" · ")
            };
            AtomInfo {
                label,
                top_tokens,
                examples,
                source: sources
                    .get(j)
                    .filter(|&&r| (r as usize) < n)
                    .map(|&r| example(model, acts, r as usize, 1.0)),
                density: count[j] as f32 / rows,
                importance: importance[j]
                    .iter()
                    .map(|&s| (s / n.max(1) as f64) as f32)
                    .collect(),
            }
        })
        .collect();
}

/// One atom of a decomposition (`hubel decompose --json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    /// `D{j}`.
    pub feature: String,
    pub atom: usize,
    pub coef: f32,
    pub label: String,
    pub top_tokens: Vec<String>,
}

/// What was decomposed: the text, the token read, the hook.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decomposition {
    pub text: String,
    pub token: String,
    pub position: usize,
    pub hook: String,
    pub parts: Vec<Part>,
    /// ‖x − x̂‖² / ‖x − mean‖² for this one residual.
    pub residual_fraction: f32,
}

/// The hook a decomposition reads: `layer` chooses `blocks.{layer}.hook_resid_post` (or any of
/// the dictionary's hooks in that block), none the dictionary's first hook.
pub fn hook_for(dict: &Dictionary, layer: Option<usize>) -> Result<HookPoint, DictError> {
    match layer {
        None => Ok(dict.config.hooks[0]),
        Some(l) => dict
            .config
            .hooks
            .iter()
            .copied()
            .find(|h| h.layer() == Some(l))
            .ok_or_else(|| {
                DictError::Invalid(format!(
                    "the dictionary reads {}, nothing in layer {l}",
                    dict.hooks_text()
                ))
            }),
    }
}

/// `word`'s residual at `hook`, in `context` (its last occurrence there is read; its last token),
/// or, without a context, the word alone; a model without a BOS reads it after a newline, so that
/// it is not at position 0 (the attention sink, whose residual the dictionary never saw) unless
/// the hook is the embedding (which no context changes).
pub fn decompose(
    model: &Model,
    dict: &Dictionary,
    word: &str,
    context: Option<&str>,
    hook: HookPoint,
    top: usize,
) -> Result<Decomposition, DictError> {
    if word.trim().is_empty() {
        return Err(DictError::Invalid("the word is empty".into()));
    }
    let h = dict.hook_index(hook)?;
    let marked = match context {
        Some(c) => {
            let at = c.rfind(word).ok_or_else(|| {
                DictError::Invalid(format!("the context does not contain `{word}`"))
            })?;
            format!("{}[[{}]]{}", &c[..at], word, &c[at + word.len()..])
        }
        None => {
            let prefix = crate::experiments::special_prefix(model);
            if prefix.is_empty() && hook != HookPoint::Embed {
                format!("\n[[{word}]]")
            } else {
                format!("[[{word}]]")
            }
        }
    };
    let stimulus = parse_marker(&marked)
        .map_err(|_| DictError::Invalid(format!("`{word}` cannot be marked in its context")))?;
    let tokens = model
        .tokenizer()
        .encode_with_offsets(&stimulus.text)
        .map_err(|e| DictError::Invalid(e.to_string()))?;
    let offsets: Vec<(usize, usize)> = tokens.iter().map(|t| t.1).collect();
    let ids: Vec<u32> = tokens.iter().map(|t| t.0.id).collect();
    let position = reading_position(&offsets, stimulus.target)
        .ok_or_else(|| DictError::Invalid(format!("no token of the text overlaps `{word}`")))?;
    if ids.len() > model.config().n_ctx {
        return Err(DictError::Invalid(format!(
            "the text has {} tokens; the model reads at most {}",
            ids.len(),
            model.config().n_ctx
        )));
    }
    let last = hook.layer().unwrap_or(0);
    let record = model
        .run_batch_through(&[&ids], &Capture::points([hook]), last, None)?
        .remove(0);
    let act = record
        .get(hook)
        .ok_or_else(|| DictError::Invalid(format!("{hook} was not recorded")))?;
    let x = act.row(position).to_vec();
    if x.len() != dict.d() {
        return Err(DictError::Invalid(format!(
            "{hook} has {} values per token here; the dictionary reads {}",
            x.len(),
            dict.d()
        )));
    }
    let code = dict.encode(h, &x).remove(0);
    let xhat = dict.decode(h, &code);
    let err: f32 = x.iter().zip(&xhat).map(|(a, b)| (a - b).powi(2)).sum();
    let tot: f32 = x
        .iter()
        .zip(&dict.norms[h].shift)
        .map(|(a, m)| (a - m).powi(2))
        .sum();
    let parts = code
        .iter()
        .take(top)
        .map(|&(j, v)| {
            let j = j as usize;
            Part {
                feature: format!("D{j}"),
                atom: j,
                coef: v,
                label: dict.label(j),
                top_tokens: dict
                    .info
                    .get(j)
                    .map(|i| i.top_tokens.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    Ok(Decomposition {
        text: stimulus.text,
        token: token_display(model, ids[position]),
        position,
        hook: hook.to_string(),
        parts,
        residual_fraction: err / tot.max(1e-30),
    })
}
